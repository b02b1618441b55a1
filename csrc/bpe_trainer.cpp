// bpe_trainer.cpp — learning byte-level BPE merges from pre-tokenized word counts (see bpe.h).
#include <algorithm>
#include <cstring>
#include <queue>

#include "bpe.h"
#include "tensor.h"

namespace lf::tok {

BpeTrainer::BpeTrainer(Pattern pattern, std::vector<std::string> specials)
    : pattern_(pattern), specials_(std::move(specials)) {
  for (const auto& s : specials_)
    if (s.empty()) throw ValueError("tokenizer.train: special tokens must not be empty");
}

void BpeTrainer::feed_segment(const uint8_t* s, size_t n) {
  split(pattern_, s, n, [&](size_t b, size_t e) {
    ++counts_[std::string(reinterpret_cast<const char*>(s + b), e - b)];
    ++pieces_;
  });
}

void BpeTrainer::feed(std::string_view text) {
  bytes_ += int64_t(text.size());
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t pos = 0;
  while (pos < text.size()) {
    // the leftmost (then longest) special token from pos
    size_t best = std::string_view::npos, best_len = 0;
    for (const auto& sp : specials_) {
      const size_t f = text.find(sp, pos);
      if (f != std::string_view::npos && (f < best || (f == best && sp.size() > best_len))) {
        best = f;
        best_len = sp.size();
      }
    }
    const size_t end = best == std::string_view::npos ? text.size() : best;
    if (end > pos) feed_segment(s + pos, end - pos);
    if (best == std::string_view::npos) break;
    pos = best + best_len;
  }
}

std::vector<Merge> BpeTrainer::train(int64_t num_new_tokens, int64_t min_frequency) const {
  std::vector<Merge> merges;
  if (num_new_tokens <= 0) return merges;
  if (min_frequency < 1) min_frequency = 1;

  // words as byte-id sequences, with their counts
  std::vector<std::vector<int32_t>> words;
  std::vector<int64_t> wcount;
  words.reserve(counts_.size());
  wcount.reserve(counts_.size());
  for (const auto& kv : counts_) {
    if (kv.first.size() < 2) continue;  // no pairs
    std::vector<int32_t> w(kv.first.size());
    for (size_t i = 0; i < kv.first.size(); ++i) w[i] = uint8_t(kv.first[i]);
    words.push_back(std::move(w));
    wcount.push_back(kv.second);
  }

  PairMap<int64_t> count;
  PairMap<std::vector<int32_t>> where;
  for (int32_t wi = 0; wi < int32_t(words.size()); ++wi) {
    const auto& w = words[wi];
    for (size_t i = 0; i + 1 < w.size(); ++i) {
      const uint64_t k = pair_key(w[i], w[i + 1]);
      count[k] += wcount[wi];
      auto& wl = where[k];
      if (wl.empty() || wl.back() != wi) wl.push_back(wi);
    }
  }

  struct Entry {
    int64_t count;
    uint64_t key;
    // max-heap: larger count first, then the smaller pair (left id, then right id)
    bool operator<(const Entry& o) const { return count != o.count ? count < o.count : key > o.key; }
  };
  std::priority_queue<Entry> heap;
  count.for_each([&](uint64_t k, int64_t c) {
    if (c >= min_frequency) heap.push({c, k});
  });

  std::vector<uint64_t> touched;
  std::vector<int32_t> out;
  std::vector<int32_t> stamp(words.size(), -1);
  // token bytes by id, to give a merge that re-creates an existing token that token's id
  std::vector<std::string> tok_bytes(256);
  std::unordered_map<std::string, int32_t> tok_index;
  for (int b = 0; b < 256; ++b) {
    tok_bytes[b] = std::string(1, char(b));
    tok_index.emplace(tok_bytes[b], b);
  }
  while (int64_t(tok_bytes.size()) - 256 < num_new_tokens && !heap.empty()) {
    const Entry top = heap.top();
    heap.pop();
    int64_t* cur = count.find(top.key);
    const int64_t now = cur ? *cur : 0;
    if (now != top.count) {  // stale: counts only fall, so re-queue with the current one
      if (now >= min_frequency) heap.push({now, top.key});
      continue;
    }
    if (now < min_frequency) break;
    const int32_t a = int32_t((top.key >> 32) - 1), b = int32_t(top.key & 0xFFFFFFFFu);
    std::string cb = tok_bytes[a] + tok_bytes[b];
    int32_t c;
    auto found = tok_index.find(cb);
    if (found != tok_index.end()) {
      c = found->second;
    } else {
      c = int32_t(tok_bytes.size());
      tok_index.emplace(cb, c);
      tok_bytes.push_back(std::move(cb));
    }
    const int32_t step = int32_t(merges.size());
    merges.push_back({a, b, c});

    std::vector<int32_t> ws;
    if (auto* wl = where.find(top.key)) ws.swap(*wl);
    touched.clear();
    for (int32_t wi : ws) {
      if (stamp[wi] == step) continue;
      stamp[wi] = step;
      auto& w = words[wi];
      const int64_t f = wcount[wi];
      out.clear();
      bool changed = false;
      for (size_t i = 0; i < w.size();) {
        if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
          changed = true;
          // the neighbour pairs: (prev, a) -> (prev, c) and (b, next) -> (c, next)
          auto replace = [&](uint64_t gone, uint64_t made) {
            count[gone] -= f;
            count[made] += f;
            auto& wl = where[made];
            if (wl.empty() || wl.back() != wi) wl.push_back(wi);
            touched.push_back(made);
          };
          if (!out.empty()) replace(pair_key(out.back(), a), pair_key(out.back(), c));
          if (i + 2 < w.size()) replace(pair_key(b, w[i + 2]), pair_key(c, w[i + 2]));
          out.push_back(c);
          i += 2;
        } else {
          out.push_back(w[i]);
          ++i;
        }
      }
      if (changed) w.assign(out.begin(), out.end());
    }
    count[top.key] = 0;
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (uint64_t k : touched) {
      const int64_t v = *count.find(k);
      if (v >= min_frequency) heap.push({v, k});
    }
  }
  return merges;
}

}  // namespace lf::tok
