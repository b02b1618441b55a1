#!/usr/bin/env bash
# One GPU session on a lent machine (see the device tool): build, run the `cuda`
# tests, run the GPU benchmarks, and leave everything under $OUT.
#
#   bash bench/gpu_session.sh            # on the GPU machine, from the repository root
#
# The machine has python3 with torch, pybind11, scikit-build-core, cmake and ninja,
# and no network: build without isolation or dependencies.
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; python3 -c "import torch; print('torch', torch.__version__)"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

LLMFORGE_CUDA=ON python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { tail -50 "$OUT/build.log"; exit 1; }
python3 -c "import llmforge; print(llmforge.build_info())" | tee -a "$OUT/machine.txt"

python3 -m pytest -q -p no:logging -m cuda tests 2>&1 | tee "$OUT/cuda_tests.txt" | tail -30

# compute-sanitizer (memcheck: out-of-bounds / misaligned accesses; racecheck: shared-memory
# hazards) over the small-size cuda tests of the attention and paged KV kernels (the tests
# whose names contain "sanitizer"). Torch's caching allocator is off so that memcheck sees
# every allocation's real bounds. SANITIZER=0 skips this part.
if [ "${SANITIZER:-1}" != 0 ] && command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${SANITIZER_TIMEOUT:-900}" compute-sanitizer --tool "$tool" \
      --error-exitcode 9 python3 -m pytest -q -p no:logging -p no:cacheprovider -m cuda -k sanitizer \
      tests/ops/test_attention_cuda.py tests/ops/test_paged_kv_cuda.py > "$OUT/sanitizer_$tool.txt" 2>&1
    echo "compute-sanitizer $tool: exit $?" | tee -a "$OUT/sanitizer_$tool.txt"
    grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer_$tool.txt" | tail -3
  done
fi

# Benchmarks: every bench module that knows the cuda device.
rm -f bench/results/gpu.csv.new
python3 -m bench ${BENCH_OPS:-all} --device cuda --record 2>&1 | tee "$OUT/bench.txt"
cp bench/results/gpu.md bench/results/gpu.csv "$OUT/" 2>/dev/null || true
