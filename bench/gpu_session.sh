#!/usr/bin/env bash
# One GPU session on a lent machine (see the device tool): build, run the `cuda`
# tests, run the GPU benchmarks, and leave everything under $OUT.
#
#   bash bench/gpu_session.sh                 # on the GPU machine, from the repository root
#   BUDGET_S=540 PHASES="build tests bench sanitizer" BENCH_OPS="attention paged_kv" bash bench/gpu_session.sh
#   LLMFORGE_COMMIT=<sha> ...   # the commit the tables record, where the copy has no .git
#
# From a session with the device tool: run(command="LLMFORGE_COMMIT=<sha> bash bench/gpu_session.sh",
# timeout_s=600), then copy $OUT's gpu.md / gpu.csv over bench/results/ and commit them.
#
# The machine has python3 with torch, pybind11, scikit-build-core, cmake and ninja,
# and no network: build without isolation or dependencies.
#
# A lent machine gives one command at most 10 minutes (and a task 15 minutes in all), so the
# whole script keeps to BUDGET_S seconds (default 540): each phase runs under `timeout` with
# what is left, in the order of what the open issues need measured most. The sanitizer runs
# last (it is slow, and refuses the device on gVisor machines). Benchmarks go one op at a
# time, each recorded as soon as it finishes, so a phase cut short keeps what it measured.
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-540}
PHASES=${PHASES:-build tests bench sanitizer}
# the ops the open issues' figures come from first (attention + paged KV: #4; quantized
# matmul, RMSNorm, RMSNorm+GEMM, SwiGLU, RoPE: #5; the ~125M training step: #7)
BENCH_OPS=${BENCH_OPS:-attention paged_kv qmatmul rmsnorm rmsnorm_gemm swiglu rope train}
START=$(date +%s)

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
# run_for CAP CMD...: CMD under a timeout of min(CAP, what is left of the budget)
run_for() {
  local cap=$1; shift
  local t; t=$(left)
  (( t > cap )) && t=$cap
  if (( t < 10 )); then echo "skipped (budget spent): $*"; return 124; fi
  timeout "$t" "$@"
}
has() { [[ " $PHASES " == *" $1 "* ]]; }

{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch; print('torch', torch.__version__)"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

if has build; then
  export LLMFORGE_CUDA=ON
  run_for 300 python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
    || { tail -50 "$OUT/build.log"; exit 1; }
  python3 -c "import llmforge; print(llmforge.build_info())" | tee -a "$OUT/machine.txt"
  echo "build done at $(( $(date +%s) - START )) s"
fi

if has tests; then
  # --continue-on-collection-errors: the device image lacks some optional packages (gguf, openai,
  # the corpora, llama-cpp-python) that non-cuda test modules import; without it their 7 collection
  # errors would stop the run before any cuda test (seen by collecting with those packages blocked)
  run_for 180 python3 -m pytest -q -p no:logging -p no:cacheprovider -m cuda --continue-on-collection-errors tests \
    > "$OUT/cuda_tests.txt" 2>&1
  echo "cuda tests: exit $? at $(( $(date +%s) - START )) s"; tail -15 "$OUT/cuda_tests.txt"
fi

if has bench; then
  for op in $BENCH_OPS; do
    run_for 120 python3 -m bench "$op" --device cuda --record >> "$OUT/bench.txt" 2>&1
    echo "bench $op: exit $? at $(( $(date +%s) - START )) s"
  done
  cp bench/results/gpu.md bench/results/gpu.csv "$OUT/" 2>/dev/null || true
fi

# compute-sanitizer (memcheck: out-of-bounds / misaligned accesses; racecheck: shared-memory
# hazards) over the small-size cuda tests of the attention and paged KV kernels (the tests
# whose names contain "sanitizer"). Torch's caching allocator is off so that memcheck sees
# every allocation's real bounds.
if has sanitizer && command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck; do
    run_for 240 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" \
      --error-exitcode 9 python3 -m pytest -q -p no:logging -p no:cacheprovider -m cuda -k sanitizer \
      tests/ops/test_attention_cuda.py tests/ops/test_paged_kv_cuda.py > "$OUT/sanitizer_$tool.txt" 2>&1
    echo "compute-sanitizer $tool: exit $?" | tee -a "$OUT/sanitizer_$tool.txt"
    grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer_$tool.txt" | tail -3
  done
fi

# the tables last: the device tool returns the end of the output
grep -E "^\| |^### " "$OUT/bench.txt" 2>/dev/null | cut -c1-160 | tail -80
echo "session done at $(( $(date +%s) - START )) s of $BUDGET_S"
