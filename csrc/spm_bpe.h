// spm_bpe.h — SentencePiece-style BPE (the Llama 2, Mistral v0.1-v0.3 and Phi-3 tokenizers).
//
// Input is text that was already normalised (spaces as U+2581 "▁", the prefix added) by
// llmforge.tokenizer.spm. A word starts as one symbol per UTF-8 character: the piece of
// that character, else its bytes as the <0xXX> byte-fallback pieces, else the unknown
// piece (consecutive unknowns fused into one when fuse_unk). Then the adjacent pair of
// lowest rank merges, leftmost first among equal ranks, until no pair has a rank (Hugging
// Face's BPE with byte_fallback). Ranks may repeat: a table built from SentencePiece
// scores gives every split of one piece the same rank (llama.cpp's SPM tokenizer).
// split: the text is cut before every "▁" first (Metaspace with split=true). Without it the
// text is still cut before a "▁" where no piece holds the character before it followed by "▁"
// (no merge can cross such a place, so the ids are the same); this keeps the merge heaps small.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <string_view>
#include <vector>

#include "bpe.h"

namespace lf::tok {

struct SpmMerge {
  int32_t left, right, result, rank;
};

class SpmModel {
 public:
  // pieces[id]: UTF-8 bytes ("▁" as E2 96 81); char_ok[id]: the piece may stand for its
  // character (false for control / added tokens); byte_ids: 256 ids of <0x00>..<0xFF>
  // (-1 where absent) or empty; unk_id: -1 for none.
  SpmModel(std::vector<std::string> pieces, const std::vector<uint8_t>& char_ok, const std::vector<SpmMerge>& merges,
           const std::vector<int32_t>& byte_ids, int32_t unk_id, bool fuse_unk);

  // out[i] = ids of texts[i]. Words up to kCacheWord bytes are cached (one cache per thread, kept
  // between calls; calls are serialised).
  void encode_batch(const std::vector<std::string_view>& texts, bool split, std::vector<std::vector<int32_t>>& out,
                    int threads);
  size_t vocab_size() const { return pieces_.size(); }
  size_t num_pairs() const { return ranks_.size(); }

 private:
  struct Scratch {
    std::vector<int32_t> syms;
    MergeScratch merge;
    // word cache: bytes -> (offset, count) in ids
    std::unordered_map<std::string, std::pair<uint32_t, uint32_t>> cache;
    std::vector<int32_t> ids;
    std::string key;
  };
  void encode_word(const uint8_t* s, size_t n, Scratch& sc, std::vector<int32_t>& out) const;
  void encode_cached(const uint8_t* s, size_t n, Scratch& sc, std::vector<int32_t>& out) const;
  void encode_with(Scratch& sc, std::string_view text, bool split, std::vector<int32_t>& out) const;

  std::vector<std::string> pieces_;
  PairMap<int32_t> char_id_;  // key: (length << 32 | up to 4 bytes) -> id + 1
  PairMap<MergeRank> ranks_;
  bool meta_known_ = false;
  PairMap<int32_t> glue_;     // characters (char_key) that some piece holds just before a "▁"
  std::mutex mu_;
  Scratch scratch_;
  std::vector<Scratch> thread_scratch_;
  int32_t byte_id_[256];
  bool has_bytes_ = false;
  int32_t unk_ = -1;
  bool fuse_unk_ = false;
};

}  // namespace lf::tok
