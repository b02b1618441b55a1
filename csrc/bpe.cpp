// bpe.cpp — the byte-level BPE model: validation, encode (with a piece cache), decode.
#include "bpe.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <exception>
#include <functional>

#include <omp.h>

#include "tensor.h"
#include "tok_parallel.h"

namespace lf::tok {
namespace {

constexpr size_t kLongPiece = 128;          // longer pieces use the heap merge
constexpr size_t kCacheMaxEntries = 1 << 20;  // cleared when full
constexpr size_t kCacheMaxKeyBytes = 64u << 20;
constexpr size_t kCacheMaxPiece = 256;        // longer pieces are not cached
constexpr size_t kMaxPiece = size_t(1) << 30;

inline uint64_t hash_bytes(const uint8_t* s, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0xC2B2AE3D27D4EB4FULL);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    std::memcpy(&v, s + i, 8);
    h = (h ^ v) * 0xFF51AFD7ED558CCDULL;
    h ^= h >> 32;
  }
  uint64_t v = 0;
  for (size_t k = 0; i + k < n; ++k) v |= uint64_t(s[i + k]) << (8 * k);
  h = (h ^ v) * 0xC4CEB9FE1A85EC53ULL;
  h ^= h >> 29;
  return h | 1;  // never 0
}

// memcmp(a, b, n) == 0, without a call for the short keys that dominate
inline bool same_bytes(const char* a, const uint8_t* b, size_t n) {
  if (n <= 8) {
    uint64_t x = 0, y = 0;
    std::memcpy(&x, a, n);
    std::memcpy(&y, b, n);
    return x == y;
  }
  return std::memcmp(a, b, n) == 0;
}

std::string id_msg(int64_t id) { return std::to_string(id); }

}  // namespace

BpeModel::BpeModel(std::vector<std::string> tokens, const std::vector<Merge>& merges,
                   const std::vector<int32_t>& added, Pattern pattern, bool ignore_merges)
    : tokens_(std::move(tokens)), pattern_(pattern), ignore_merges_(ignore_merges) {
  const int64_t V = int64_t(tokens_.size());
  if (V == 0) throw ValueError("tokenizer: the vocabulary is empty");
  if (V >= (int64_t(1) << 31) - 1) throw ValueError("tokenizer: vocabulary too large");
  is_added_.assign(V, 0);
  for (int32_t id : added) {
    if (id < 0 || id >= V) throw ValueError("tokenizer: added token id " + id_msg(id) + " out of range");
    if (is_added_[id]) throw ValueError("tokenizer: added token id " + id_msg(id) + " listed twice");
    if (tokens_[id].empty()) throw ValueError("tokenizer: added token " + id_msg(id) + " is empty");
    is_added_[id] = 1;
    added_.emplace_back(tokens_[id], id);
  }
  // longest first, so that "<|a|>x" wins over "<|a|>" at the same position
  std::stable_sort(added_.begin(), added_.end(),
                   [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
  for (auto& a : added_) added_first_[uint8_t(a.first[0])] = true;

  std::fill(std::begin(byte_id_), std::end(byte_id_), -1);
  for (int64_t id = 0; id < V; ++id) {
    if (is_added_[id]) continue;
    const std::string& t = tokens_[id];
    if (t.empty()) throw ValueError("tokenizer: token " + id_msg(id) + " is empty");
    if (t.size() == 1 && byte_id_[uint8_t(t[0])] < 0) byte_id_[uint8_t(t[0])] = int32_t(id);
  }
  for (size_t r = 0; r < merges.size(); ++r) {
    const Merge& m = merges[r];
    for (int32_t x : {m.left, m.right, m.result})
      if (x >= 0 && x < V && is_added_[x])
        throw ValueError("tokenizer: merge " + std::to_string(r) + " uses added token " + id_msg(x));
    add_merge(ranks_, tokens_, r, m.left, m.right, m.result, int32_t(r));
  }
  num_merges_ = merges.size();
  if (ignore_merges_)
    for (int64_t id = 0; id < V; ++id)
      if (!is_added_[id]) token_index_.emplace(tokens_[id], int32_t(id));
  state_.clear();
}

void BpeModel::State::clear() {
  index.assign(1 << 12, CacheSlot{});
  used = 0;
  keys.clear();
  vals.clear();
}

void add_merge(PairMap<MergeRank>& ranks, const std::vector<std::string>& tokens, size_t r, int32_t left,
               int32_t right, int32_t result, int32_t rank) {
  const int64_t V = int64_t(tokens.size());
  for (int32_t x : {left, right, result})
    if (x < 0 || x >= V)
      throw ValueError("tokenizer: merge " + std::to_string(r) + " uses id " + id_msg(x) + " out of range");
  if (rank < 0) throw ValueError("tokenizer: merge " + std::to_string(r) + " has a negative rank");
  const std::string &a = tokens[left], &b = tokens[right], &c = tokens[result];
  if (c.size() != a.size() + b.size() || c.compare(0, a.size(), a) != 0 || c.compare(a.size(), b.size(), b) != 0)
    throw ValueError("tokenizer: merge " + std::to_string(r) + " (" + id_msg(left) + ", " + id_msg(right) + ") -> " +
                     id_msg(result) + ": the result is not the concatenation of its parts");
  MergeRank& slot = ranks[pair_key(left, right)];
  if (slot.rank < 0 || rank < slot.rank) {
    slot.rank = rank;
    slot.result = result;
  }
}

void merge_by_rank(std::vector<int32_t>& syms, const PairMap<MergeRank>& ranks, MergeScratch& sc) {
  const int n = int(syms.size());
  if (n < 2) return;
  auto &next = sc.next, &prev = sc.prev;
  next.resize(n);
  prev.resize(n);
  sc.alive.assign(n, 1);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  using Cand = MergeScratch::Cand;
  auto& heap = sc.heap;
  heap.clear();
  const std::greater<Cand> later;
  for (int i = 0; i + 1 < n; ++i)
    if (const MergeRank* r = ranks.find(pair_key(syms[i], syms[i + 1]))) heap.push_back({r->rank, i, syms[i], syms[i + 1]});
  std::make_heap(heap.begin(), heap.end(), later);
  auto push = [&](int i) {
    if (i < 0 || next[i] < 0) return;
    if (const MergeRank* r = ranks.find(pair_key(syms[i], syms[next[i]]))) {
      heap.push_back({r->rank, i, syms[i], syms[next[i]]});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Cand c = heap.back();
    heap.pop_back();
    const int i = c.pos;
    if (!sc.alive[i] || syms[i] != c.left || next[i] < 0 || syms[next[i]] != c.right) continue;
    const int j = next[i];
    syms[i] = ranks.find(pair_key(c.left, c.right))->result;
    sc.alive[j] = 0;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    push(prev[i]);
    push(i);
  }
  int w = 0;
  for (int i = 0; i < n; ++i)
    if (sc.alive[i]) syms[w++] = syms[i];
  syms.resize(w);
}

void BpeModel::bpe_long(std::vector<int32_t>& syms) const {
  MergeScratch sc;
  merge_by_rank(syms, ranks_, sc);
}

void BpeModel::bpe(const uint8_t* s, size_t n, std::vector<int32_t>& syms) const {
  if (n > kMaxPiece) throw ValueError("tokenizer: a pre-tokenized piece of more than 1 GiB cannot be encoded");
  syms.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const int32_t id = byte_id_[s[i]];
    if (id < 0) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "0x%02X", unsigned(s[i]));
      throw ValueError(std::string("tokenizer: byte ") + buf + " has no token in this vocabulary");
    }
    syms[i] = id;
  }
  if (n > kLongPiece) {
    bpe_long(syms);
    return;
  }
  size_t m = n;
  while (m > 1) {
    int32_t best = INT32_MAX, result = -1;
    size_t at = 0;
    for (size_t i = 0; i + 1 < m; ++i) {
      const Rank* r = ranks_.find(pair_key(syms[i], syms[i + 1]));
      if (r && r->rank < best) {
        best = r->rank;
        result = r->result;
        at = i;
      }
    }
    if (result < 0) break;
    const int32_t a = syms[at], b = syms[at + 1];
    size_t w = at;
    for (size_t r = at; r < m;) {
      if (r + 1 < m && syms[r] == a && syms[r + 1] == b) {
        syms[w++] = result;
        r += 2;
      } else {
        syms[w++] = syms[r++];
      }
    }
    m = w;
  }
  syms.resize(m);
}

void BpeModel::encode_uncached(const uint8_t* s, size_t n, std::vector<int32_t>& ids) const {
  ids.clear();
  if (ignore_merges_) {
    auto it = token_index_.find(std::string(reinterpret_cast<const char*>(s), n));
    if (it != token_index_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  bpe(s, n, ids);
}

void BpeModel::encode_piece(State& st, const uint8_t* s, size_t n, std::vector<int32_t>& out) const {
  if (n == 1) {
    const int32_t id = byte_id_[s[0]];
    if (id < 0) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "0x%02X", unsigned(s[0]));
      throw ValueError(std::string("tokenizer: byte ") + buf + " has no token in this vocabulary");
    }
    out.push_back(id);
    return;
  }
  if (n > kCacheMaxPiece) {
    encode_uncached(s, n, st.scratch);
    out.insert(out.end(), st.scratch.begin(), st.scratch.end());
    return;
  }
  const uint64_t h = hash_bytes(s, n);
  size_t mask = st.index.size() - 1;
  size_t i = h & mask;
  while (st.index[i].used) {
    const CacheSlot& c = st.index[i];
    if (c.hash == h && c.key_len == n && same_bytes(st.keys.data() + c.key_off, s, n)) {
      if (c.val_len == 1)
        out.push_back(st.vals[c.val_off]);
      else
        out.insert(out.end(), st.vals.begin() + c.val_off, st.vals.begin() + c.val_off + c.val_len);
      return;
    }
    i = (i + 1) & mask;
  }
  // miss: encode, then remember
  encode_uncached(s, n, st.scratch);
  out.insert(out.end(), st.scratch.begin(), st.scratch.end());
  if (st.used >= kCacheMaxEntries || st.keys.size() + n > kCacheMaxKeyBytes) {
    st.clear();
    mask = st.index.size() - 1;
    i = h & mask;
  } else if ((st.used + 1) * 2 > st.index.size()) {
    std::vector<CacheSlot> old(st.index.size() * 2);
    old.swap(st.index);
    mask = st.index.size() - 1;
    for (const CacheSlot& c : old) {
      if (!c.used) continue;
      size_t k = c.hash & mask;
      while (st.index[k].used) k = (k + 1) & mask;
      st.index[k] = c;
    }
    i = h & mask;
    while (st.index[i].used) i = (i + 1) & mask;
  }
  CacheSlot& c = st.index[i];
  c.used = true;
  c.hash = h;
  c.key_off = uint32_t(st.keys.size());
  c.key_len = uint32_t(n);
  c.val_off = uint32_t(st.vals.size());
  c.val_len = uint32_t(st.scratch.size());
  st.keys.append(reinterpret_cast<const char*>(s), n);
  st.vals.insert(st.vals.end(), st.scratch.begin(), st.scratch.end());
  ++st.used;
}

void BpeModel::encode(std::string_view text, bool match_added, std::vector<int32_t>& out) {
  std::lock_guard<std::mutex> lock(mu_);
  encode_with(state_, text, match_added, out);
}

void BpeModel::encode_batch(const std::vector<std::string_view>& texts, bool match_added,
                            std::vector<std::vector<int32_t>>& out, int threads) {
  out.assign(texts.size(), {});
  std::lock_guard<std::mutex> lock(mu_);
  for_each_text(texts, threads, state_, thread_states_,
                [] {
                  State st;
                  st.clear();
                  return st;
                },
                [&](State& st, int64_t i) { encode_with(st, texts[i], match_added, out[i]); });
}

void BpeModel::encode_with(State& st, std::string_view text, bool match_added, std::vector<int32_t>& out) const {
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  out.reserve(out.size() + n / 4 + 16);
  auto encode_segment = [&](size_t b, size_t e) {
    split(pattern_, s + b, e - b, [&](size_t pb, size_t pe) { encode_piece(st, s + b + pb, pe - pb, out); });
  };
  if (!match_added || added_.empty()) {
    encode_segment(0, n);
    return;
  }
  size_t seg = 0;
  for (size_t i = 0; i < n;) {
    if (added_first_[s[i]]) {
      bool hit = false;
      for (const auto& a : added_) {
        if (a.first.size() <= n - i && std::memcmp(s + i, a.first.data(), a.first.size()) == 0) {
          if (seg < i) encode_segment(seg, i);
          out.push_back(a.second);
          i += a.first.size();
          seg = i;
          hit = true;
          break;
        }
      }
      if (hit) continue;
    }
    ++i;
  }
  if (seg < n) encode_segment(seg, n);
}

std::string BpeModel::decode(const int64_t* ids, size_t n, bool skip_added) const {
  std::string out;
  const int64_t V = int64_t(tokens_.size());
  for (size_t i = 0; i < n; ++i) {
    const int64_t id = ids[i];
    if (id < 0 || id >= V)
      throw ValueError("tokenizer.decode: id " + id_msg(id) + " at position " + std::to_string(i) +
                       " is out of range [0, " + std::to_string(V) + ")");
    if (skip_added && is_added_[id]) continue;
    out += tokens_[id];
  }
  return out;
}

}  // namespace lf::tok
