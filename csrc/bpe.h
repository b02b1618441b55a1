// bpe.h — byte-level BPE: the model (encode/decode) and the trainer.
//
// A model is a vocabulary of byte strings (token id -> bytes), an ordered list of
// merges (left id, right id) -> result id whose position is its rank, the ids of
// the added/special tokens, and a pre-tokenizer pattern (pretokenize.h).
//
// encode: special tokens are matched first (leftmost, longest) and never split; the
// text between them is pre-tokenized, and each piece starts as one token per byte
// and merges the adjacent pair of lowest rank until none is left (the GPT-2 /
// Hugging Face algorithm). Encoded pieces are cached: one cache per model for encode()
// (calls are serialised), plus one per extra thread of the parallel encode_batch().
//
// train: pre-tokenized word counts -> merges, most frequent pair first (ties: the
// smaller (left id, right id)), with incremental pair counts: a merge only visits
// the words that contain its pair.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pretokenize.h"

namespace lf::tok {

struct Merge {
  int32_t left, right, result;
};

// Open-addressing hash map from a non-zero uint64 key (pair (a, b) as (a+1) << 32 | b) to a value.
template <class V>
class PairMap {
 public:
  PairMap() { rehash(64); }
  V* find(uint64_t key) const {
    size_t i = mix(key) & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.key == key) return const_cast<V*>(&s.value);
      if (s.key == 0) return nullptr;
      i = (i + 1) & mask_;
    }
  }
  V& operator[](uint64_t key) {
    if ((size_ + 1) * 4 > slots_.size() * 3) rehash(slots_.size() * 2);
    size_t i = mix(key) & mask_;
    while (true) {
      Slot& s = slots_[i];
      if (s.key == key) return s.value;
      if (s.key == 0) {
        s.key = key;
        ++size_;
        return s.value;
      }
      i = (i + 1) & mask_;
    }
  }
  size_t size() const { return size_; }
  template <class F> void for_each(F&& f) {
    for (auto& s : slots_)
      if (s.key) f(s.key, s.value);
  }

 private:
  struct Slot {
    uint64_t key = 0;
    V value{};
  };
  static size_t mix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return size_t(k);
  }
  void rehash(size_t n) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(n, Slot{});
    mask_ = n - 1;
    size_ = 0;
    for (auto& s : old)
      if (s.key) (*this)[s.key] = std::move(s.value);
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0, size_ = 0;
};

inline uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) + 1) << 32 | uint32_t(b); }

// A pair's merge: its rank (lower merges first) and the id it becomes.
struct MergeRank {
  int32_t rank = -1, result = -1;
};

// Checks merge r (left, right) -> result against tokens (ids in range, the result the concatenation
// of its parts) and enters it in ranks with the given rank; a pair seen again keeps its lowest rank.
// Throws ValueError naming the merge.
void add_merge(PairMap<MergeRank>& ranks, const std::vector<std::string>& tokens, size_t r, int32_t left,
               int32_t right, int32_t result, int32_t rank);

// Buffers of merge_by_rank, kept between calls.
struct MergeScratch {
  struct Cand {
    int32_t rank, pos, left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<int> next, prev;
  std::vector<uint8_t> alive;
  std::vector<Cand> heap;
};

// Merges the adjacent pair of lowest rank (leftmost among equal ranks) until no pair has one,
// with a heap of candidate pairs: O(n log n) for a word of n symbols. syms is left merged.
void merge_by_rank(std::vector<int32_t>& syms, const PairMap<MergeRank>& ranks, MergeScratch& sc);

class BpeModel {
 public:
  // tokens[id]: the bytes of each token (for added tokens: their content);
  // merges in rank order; added: ids of the added tokens (special or not), matched in
  // the text before pre-tokenization. ignore_merges: a piece that is itself in the
  // vocabulary is emitted as that one token (Hugging Face's BPE option).
  // Throws lf::ValueError when the pieces do not form a consistent model.
  BpeModel(std::vector<std::string> tokens, const std::vector<Merge>& merges, const std::vector<int32_t>& added,
           Pattern pattern, bool ignore_merges);

  // Appends the ids of text to out. Throws ValueError when a byte has no token.
  void encode(std::string_view text, bool match_added, std::vector<int32_t>& out);
  // out[i] = ids of texts[i], on up to `threads` OpenMP threads (each with its own cache).
  void encode_batch(const std::vector<std::string_view>& texts, bool match_added,
                    std::vector<std::vector<int32_t>>& out, int threads);
  // Concatenated token bytes; throws ValueError for an id out of range.
  std::string decode(const int64_t* ids, size_t n, bool skip_added) const;

  size_t vocab_size() const { return tokens_.size(); }
  const std::string& token(int32_t id) const { return tokens_[id]; }
  Pattern pattern() const { return pattern_; }
  size_t num_merges() const { return num_merges_; }
  size_t cache_size() const { return state_.used; }

 private:
  // cache: piece bytes -> ids. Open addressing over an arena of keys and values.
  struct CacheSlot {
    uint64_t hash = 0;
    uint32_t key_off = 0, key_len = 0, val_off = 0, val_len = 0;
    bool used = false;
  };
  struct State {
    std::vector<CacheSlot> index;
    size_t used = 0;
    std::string keys;
    std::vector<int32_t> vals;
    std::vector<int32_t> scratch;
    void clear();
  };
  void encode_with(State& st, std::string_view text, bool match_added, std::vector<int32_t>& out) const;
  void encode_piece(State& st, const uint8_t* s, size_t n, std::vector<int32_t>& out) const;
  void encode_uncached(const uint8_t* s, size_t n, std::vector<int32_t>& ids) const;
  void bpe(const uint8_t* s, size_t n, std::vector<int32_t>& syms) const;
  void bpe_long(std::vector<int32_t>& syms) const;

  using Rank = MergeRank;
  std::vector<std::string> tokens_;
  std::vector<uint8_t> is_added_;
  int32_t byte_id_[256];
  PairMap<Rank> ranks_;
  size_t num_merges_ = 0;
  Pattern pattern_;
  bool ignore_merges_;
  std::unordered_map<std::string, int32_t> token_index_;  // only for ignore_merges
  // added tokens, longest first, and which bytes can start one
  std::vector<std::pair<std::string, int32_t>> added_;
  bool added_first_[256] = {};

  State state_;                      // encode()'s cache (and thread 0's in encode_batch)
  std::vector<State> thread_states_;  // the other encode_batch threads' caches, kept between calls
  std::mutex mu_;                     // guards all caches
};

class BpeTrainer {
 public:
  // specials are cut out of the training text (never part of a word).
  BpeTrainer(Pattern pattern, std::vector<std::string> specials);
  // Pre-tokenizes one document and adds its words to the counts.
  void feed(std::string_view text);
  // Learns merges over the byte tokens 0..255 until num_new_tokens new tokens exist
  // (ids 256, 257, ... in order of creation) or no pair occurs min_frequency times.
  // A merge whose bytes equal an existing token's reuses that token's id (so a merge
  // does not always add a token, as in Hugging Face's trainer).
  std::vector<Merge> train(int64_t num_new_tokens, int64_t min_frequency) const;
  size_t num_words() const { return counts_.size(); }
  int64_t num_pieces() const { return pieces_; }
  int64_t num_bytes() const { return bytes_; }

 private:
  void feed_segment(const uint8_t* s, size_t n);
  Pattern pattern_;
  std::vector<std::string> specials_;
  std::unordered_map<std::string, int64_t> counts_;
  int64_t pieces_ = 0, bytes_ = 0;
};

}  // namespace lf::tok
