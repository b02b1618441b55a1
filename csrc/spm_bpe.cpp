// spm_bpe.cpp — SentencePiece-style BPE encode (see spm_bpe.h).
#include "spm_bpe.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "tensor.h"
#include "tok_parallel.h"

namespace lf::tok {
namespace {

// Length of the UTF-8 character starting at s[0] (1 for a byte that does not start a valid one).
inline size_t utf8_len(const uint8_t* s, size_t n) {
  const uint8_t c = s[0];
  size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (len > n) return 1;
  for (size_t k = 1; k < len; ++k)
    if ((s[k] & 0xC0) != 0x80) return 1;
  return len;
}

inline uint64_t char_key(const uint8_t* s, size_t len) {
  uint32_t v = 0;
  std::memcpy(&v, s, len);
  return (uint64_t(len) << 32) | v;
}

constexpr uint8_t kMeta[3] = {0xE2, 0x96, 0x81};  // U+2581
constexpr size_t kCacheWord = 64;                 // longer words are not cached
constexpr size_t kCacheEntries = size_t(1) << 18;  // the cache is cleared when it holds more

}  // namespace

SpmModel::SpmModel(std::vector<std::string> pieces, const std::vector<uint8_t>& char_ok,
                   const std::vector<SpmMerge>& merges, const std::vector<int32_t>& byte_ids, int32_t unk_id,
                   bool fuse_unk)
    : pieces_(std::move(pieces)), unk_(unk_id), fuse_unk_(fuse_unk) {
  const int64_t V = int64_t(pieces_.size());
  if (V == 0) throw ValueError("tokenizer: the vocabulary is empty");
  if (V >= (int64_t(1) << 31) - 1) throw ValueError("tokenizer: vocabulary too large");
  if (int64_t(char_ok.size()) != V) throw ValueError("tokenizer: char_ok must have one entry per piece");
  if (unk_ < -1 || unk_ >= V) throw ValueError("tokenizer: unk id " + std::to_string(unk_) + " out of range");
  for (int64_t id = V - 1; id >= 0; --id) {  // the lowest id wins for a repeated character
    const std::string& p = pieces_[id];
    if (!char_ok[id] || p.empty() || p.size() > 4) continue;
    const auto* s = reinterpret_cast<const uint8_t*>(p.data());
    if (utf8_len(s, p.size()) != p.size()) continue;
    char_id_[char_key(s, p.size())] = int32_t(id) + 1;
  }
  std::fill(std::begin(byte_id_), std::end(byte_id_), -1);
  if (!byte_ids.empty()) {
    if (byte_ids.size() != 256) throw ValueError("tokenizer: byte_ids must hold 256 ids");
    for (int b = 0; b < 256; ++b) {
      if (byte_ids[b] < -1 || byte_ids[b] >= V)
        throw ValueError("tokenizer: byte token id " + std::to_string(byte_ids[b]) + " out of range");
      byte_id_[b] = byte_ids[b];
      has_bytes_ = true;
    }
  }
  for (size_t r = 0; r < merges.size(); ++r)
    add_merge(ranks_, pieces_, r, merges[r].left, merges[r].right, merges[r].result, merges[r].rank);
  meta_known_ = char_id_.find(char_key(kMeta, 3)) != nullptr;  // else unknown "▁"s could fuse across a cut
  for (const std::string& p : pieces_) {
    const auto* q = reinterpret_cast<const uint8_t*>(p.data());
    size_t at = 0, len = 0;
    for (size_t i = 0; i < p.size();) {
      const size_t l = utf8_len(q + i, p.size() - i);
      if (i > 0 && l == 3 && std::memcmp(q + i, kMeta, 3) == 0) glue_[char_key(q + at, len)] = 1;
      at = i;
      len = l;
      i += l;
    }
  }
}

void SpmModel::encode_word(const uint8_t* s, size_t n, Scratch& sc, std::vector<int32_t>& out) const {
  auto& syms = sc.syms;
  syms.clear();
  bool prev_unk = false;
  for (size_t i = 0; i < n;) {
    const size_t len = utf8_len(s + i, n - i);
    const int32_t* hit = char_id_.find(char_key(s + i, len));
    if (hit) {
      syms.push_back(*hit - 1);
      prev_unk = false;
    } else {
      bool all = has_bytes_;
      for (size_t k = 0; all && k < len; ++k) all = byte_id_[s[i + k]] >= 0;
      if (all) {
        for (size_t k = 0; k < len; ++k) syms.push_back(byte_id_[s[i + k]]);
        prev_unk = false;
      } else {
        if (unk_ < 0) {
          char buf[32];
          std::snprintf(buf, sizeof buf, "byte 0x%02X", unsigned(s[i]));
          throw ValueError(std::string("tokenizer: the character at ") + buf +
                           " has no piece, no byte-fallback piece, and the vocabulary has no unknown token");
        }
        if (!(fuse_unk_ && prev_unk)) syms.push_back(unk_);
        prev_unk = true;
      }
    }
    i += len;
  }
  merge_by_rank(syms, ranks_, sc.merge);
  out.insert(out.end(), syms.begin(), syms.end());
}

void SpmModel::encode_cached(const uint8_t* s, size_t n, Scratch& sc, std::vector<int32_t>& out) const {
  if (n > kCacheWord) {
    encode_word(s, n, sc, out);
    return;
  }
  sc.key.assign(reinterpret_cast<const char*>(s), n);
  auto it = sc.cache.find(sc.key);
  if (it != sc.cache.end()) {
    out.insert(out.end(), sc.ids.begin() + it->second.first, sc.ids.begin() + it->second.first + it->second.second);
    return;
  }
  const size_t before = out.size();
  encode_word(s, n, sc, out);
  if (sc.cache.size() >= kCacheEntries) {
    sc.cache.clear();
    sc.ids.clear();
  }
  sc.cache.emplace(sc.key, std::make_pair(uint32_t(sc.ids.size()), uint32_t(out.size() - before)));
  sc.ids.insert(sc.ids.end(), out.begin() + before, out.end());
}

void SpmModel::encode_with(Scratch& sc, std::string_view text, bool split, std::vector<int32_t>& out) const {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  if (n > (size_t(1) << 30)) throw ValueError("tokenizer: a text of more than 1 GiB cannot be encoded");
  out.reserve(out.size() + n / 3 + 4);
  // cut before a "▁" when split, or when no piece glues the character before it to a "▁"
  size_t start = 0, prev_at = 0, prev_len = 0;
  for (size_t i = 0; i < n;) {
    const size_t len = utf8_len(s + i, n - i);
    if (len == 3 && i > start && std::memcmp(s + i, kMeta, 3) == 0) {
      const bool prev_meta = prev_len == 3 && std::memcmp(s + prev_at, kMeta, 3) == 0;
      if (split || (meta_known_ && !prev_meta && !glue_.find(char_key(s + prev_at, prev_len)))) {
        encode_cached(s + start, i - start, sc, out);
        start = i;
      }
    }
    prev_at = i;
    prev_len = len;
    i += len;
  }
  if (start < n) encode_cached(s + start, n - start, sc, out);
}

void SpmModel::encode_batch(const std::vector<std::string_view>& texts, bool split,
                            std::vector<std::vector<int32_t>>& out, int threads) {
  out.assign(texts.size(), {});
  std::lock_guard<std::mutex> lock(mu_);
  for_each_text(texts, threads, scratch_, thread_scratch_, [] { return Scratch{}; },
                [&](Scratch& sc, int64_t i) { encode_with(sc, texts[i], split, out[i]); });
}

}  // namespace lf::tok
