// pretokenize.h — the byte-level BPE pre-tokenizer: splits UTF-8 text into the
// pieces ("words") that BPE then encodes independently.
//
// Pattern::gpt2 is the GPT-2 regex, implemented by hand with its exact regex
// semantics (leftmost alternative wins, greedy runs, the \s+(?!\S) lookahead):
//
//     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// It is the pattern of Hugging Face's ByteLevel pre-tokenizer (use_regex=true)
// and of llama.cpp's pre-tokenizer "gpt-2" (LLAMA_VOCAB_PRE_TYPE_GPT2 in
// llama.cpp src/llama-vocab.cpp), so a GGUF export splits text the same way.
//
// Pattern::llama3 (Llama 3's tokenizer.json; llama.cpp "llama-bpe") and Pattern::qwen2 (Qwen2 and
// Qwen3; llama.cpp "qwen2") are, with the same semantics,
//
//     (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//     \s*[\r\n]+|\s+(?!\S)|\s+
//
// with \p{N} (one digit per piece) in place of \p{N}{1,3} for qwen2. The case-insensitive
// contractions take the ASCII letters and U+017F (long s, which Unicode case folding maps to
// 's'), as Hugging Face's regex engine does.
//
// Input is bytes: a byte that does not start a valid UTF-8 sequence (or a
// truncated / overlong / surrogate sequence) counts as one code point of class
// "other", like the lone surrogate Python's errors="surrogateescape" makes of it.
// Every byte of the input lands in exactly one piece, so pieces concatenate back
// to the input.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lf::tok {

enum class Pattern : int { gpt2 = 0, llama3 = 1, qwen2 = 2 };

// "gpt2" / "llama3" / "qwen2" -> Pattern; throws lf::ValueError for an unknown name.
Pattern pattern_from_name(const std::string& name);
const char* pattern_name(Pattern p);

enum CpClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

// Class of a non-ASCII code point (binary search over unicode_tables.h).
uint8_t cp_class_slow(uint32_t cp);

struct AsciiClasses {
  uint8_t c[128];
};
extern const AsciiClasses kAsciiClasses;

// Decodes the code point at s[i] (i < n): returns its byte length and sets *cls.
// Invalid UTF-8 -> length 1, class other.
inline int next_cp(const uint8_t* s, size_t n, size_t i, uint8_t* cls) {
  const uint8_t b0 = s[i];
  if (b0 < 0x80) {
    *cls = kAsciiClasses.c[b0];
    return 1;
  }
  uint32_t cp;
  int len;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) goto invalid;
    cp = (uint32_t(b0 & 0x1F) << 6) | (s[i + 1] & 0x3F);
    len = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (i + 2 >= n || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80) goto invalid;
    if (b0 == 0xE0 && s[i + 1] < 0xA0) goto invalid;   // overlong
    if (b0 == 0xED && s[i + 1] >= 0xA0) goto invalid;  // surrogate
    cp = (uint32_t(b0 & 0x0F) << 12) | (uint32_t(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
    len = 3;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (i + 3 >= n || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 || (s[i + 3] & 0xC0) != 0x80)
      goto invalid;
    if (b0 == 0xF0 && s[i + 1] < 0x90) goto invalid;   // overlong
    if (b0 == 0xF4 && s[i + 1] >= 0x90) goto invalid;  // > U+10FFFF
    cp = (uint32_t(b0 & 0x07) << 18) | (uint32_t(s[i + 1] & 0x3F) << 12) | (uint32_t(s[i + 2] & 0x3F) << 6) |
         (s[i + 3] & 0x3F);
    len = 4;
  } else {
    goto invalid;
  }
  *cls = cp_class_slow(cp);
  return len;
invalid:
  *cls = kOther;
  return 1;
}

// Calls emit(begin, end) (byte offsets, begin < end) for every GPT-2 piece of s[0, n), in order.
template <class Emit>
void split_gpt2(const uint8_t* s, size_t n, Emit&& emit) {
  size_t i = 0;
  while (i < n) {
    const uint8_t c0 = s[i];
    // 's|'t|'re|'ve|'m|'ll|'d  (case-sensitive, ASCII apostrophe)
    if (c0 == '\'' && i + 1 < n) {
      const uint8_t c1 = s[i + 1];
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        emit(i, i + 2);
        i += 2;
        continue;
      }
      if (i + 2 < n) {
        const uint8_t c2 = s[i + 2];
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
          emit(i, i + 3);
          i += 3;
          continue;
        }
      }
    }
    uint8_t cls;
    int len = next_cp(s, n, i, &cls);
    size_t j = i + len;  // end of the piece so far
    uint8_t run = cls;   // class of the run to extend
    if (cls == kSpace) {
      if (c0 == ' ' && j < n) {
        // ' ?\p{L}+' / ' ?\p{N}+' / ' ?[^\s\p{L}\p{N}]+' with the optional space
        uint8_t c2;
        int l2 = next_cp(s, n, j, &c2);
        if (c2 != kSpace) {
          run = c2;
          j += l2;
        }
      }
      if (run == kSpace) {
        // \s+(?!\S) | \s+ : a whitespace run; before a non-space it gives back its last
        // code point (when it has more than one) so that one can start the next piece.
        size_t last = i;
        while (j < n) {
          uint8_t c3;
          int l3 = next_cp(s, n, j, &c3);
          if (c3 != kSpace) break;
          last = j;
          j += l3;
        }
        if (j < n && last > i) j = last;
        emit(i, j);
        i = j;
        continue;
      }
    }
    // greedy run of one class: \p{L}+, \p{N}+ or [^\s\p{L}\p{N}]+
    while (j < n) {
      uint8_t c3;
      int l3 = next_cp(s, n, j, &c3);
      if (c3 != run) break;
      j += l3;
    }
    emit(i, j);
    i = j;
  }
}

// The length of a contraction (?i:'s|'t|'re|'ve|'m|'ll|'d) at s[i], or 0.
inline size_t contraction_ci(const uint8_t* s, size_t n, size_t i) {
  if (s[i] != '\'' || i + 1 >= n) return 0;
  const uint8_t c1 = s[i + 1] | 0x20;  // ASCII lower case (other bytes never match below)
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (s[i + 1] == 0xC5 && i + 2 < n && s[i + 2] == 0xBF) return 3;  // U+017F long s folds to 's'

  if (i + 2 < n) {
    const uint8_t c2 = s[i + 2] | 0x20;
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  }
  return 0;
}

inline bool is_newline(const uint8_t* s, size_t i) { return s[i] == '\r' || s[i] == '\n'; }

// Calls emit(begin, end) for every Llama-3 (max_digits 3) or Qwen2 (max_digits 1) piece of s[0, n).
template <class Emit>
void split_llama3(const uint8_t* s, size_t n, int max_digits, Emit&& emit) {
  size_t i = 0;
  // end of the run of class `cls` code points starting at j
  auto run_end = [&](size_t j, uint8_t cls) {
    while (j < n) {
      uint8_t c;
      const int l = next_cp(s, n, j, &c);
      if (c != cls) break;
      j += l;
    }
    return j;
  };
  while (i < n) {
    if (const size_t c = contraction_ci(s, n, i)) {
      emit(i, i + c);
      i += c;
      continue;
    }
    uint8_t cls;
    const int len = next_cp(s, n, i, &cls);
    const size_t j = i + len;
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (cls == kLetter) {
      const size_t e = run_end(j, kLetter);
      emit(i, e);
      i = e;
      continue;
    }
    uint8_t c2 = kOther;
    int l2 = 0;
    if (j < n) l2 = next_cp(s, n, j, &c2);
    if (cls != kNumber && !is_newline(s, i) && j < n && c2 == kLetter) {
      const size_t e = run_end(j + l2, kLetter);
      emit(i, e);
      i = e;
      continue;
    }
    // \p{N}{1,max_digits}
    if (cls == kNumber) {
      size_t e = j;
      for (int d = 1; d < max_digits && e < n; ++d) {
        uint8_t c;
        const int l = next_cp(s, n, e, &c);
        if (c != kNumber) break;
        e += l;
      }
      emit(i, e);
      i = e;
      continue;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    size_t start = cls == kOther ? i : (s[i] == ' ' && j < n && c2 == kOther) ? j : n;
    if (start < n) {
      size_t e = run_end(start, kOther);
      while (e < n && is_newline(s, e)) ++e;
      emit(i, e);
      i = e;
      continue;
    }
    // cls == kSpace: \s*[\r\n]+ up to the last newline of the whitespace run, else
    // \s+(?!\S) | \s+ (the run, less its last code point before a non-space)
    size_t e = j, last_nl = is_newline(s, i) ? i : n, last = i;
    while (e < n) {
      uint8_t c;
      const int l = next_cp(s, n, e, &c);
      if (c != kSpace) break;
      if (is_newline(s, e)) last_nl = e;
      last = e;
      e += l;
    }
    if (last_nl < n) {
      e = last_nl + 1;
    } else if (e < n && last > i) {
      e = last;
    }
    emit(i, e);
    i = e;
  }
}

template <class Emit>
void split(Pattern p, const uint8_t* s, size_t n, Emit&& emit) {
  switch (p) {
    case Pattern::gpt2: split_gpt2(s, n, emit); break;
    case Pattern::llama3: split_llama3(s, n, 3, emit); break;
    case Pattern::qwen2: split_llama3(s, n, 1, emit); break;
  }
}

// The pieces as byte offsets [b0, e0, b1, e1, ...] (for tests and Python).
std::vector<size_t> pretokenize_offsets(Pattern p, std::string_view text);

}  // namespace lf::tok
