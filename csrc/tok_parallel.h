// tok_parallel.h — the threaded loop of the tokenizers' encode_batch (bpe.cpp, spm_bpe.cpp).
#pragma once
#include <cstdint>
#include <exception>
#include <string_view>
#include <vector>

#include <omp.h>

namespace lf::tok {

// fn(state, i) for each text i on `threads` OpenMP threads: thread 0 works with `own`, thread t
// with extra[t - 1] (made with make() when missing, kept for later calls, so caches survive).
// Small batches (under 64 KiB of text) run on the calling thread. The first exception a thread
// throws is rethrown once all have stopped.
template <class State, class Make, class Fn>
void for_each_text(const std::vector<std::string_view>& texts, int threads, State& own, std::vector<State>& extra,
                   Make&& make, Fn&& fn) {
  const int64_t n = int64_t(texts.size());
  size_t total = 0;
  for (auto t : texts) total += t.size();
  if (threads <= 1 || n < 2 || total < (size_t(1) << 16)) {
    for (int64_t i = 0; i < n; ++i) fn(own, i);
    return;
  }
  while (int(extra.size()) < threads - 1) extra.push_back(make());
  std::exception_ptr error;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    State& st = t == 0 ? own : extra[t - 1];
#pragma omp for schedule(dynamic, 16)
    for (int64_t i = 0; i < n; ++i) {
      try {
        fn(st, i);
      } catch (...) {
#pragma omp critical(lf_tok_error)
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace lf::tok
