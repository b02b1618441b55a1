// pretokenize.cpp — code-point class lookup and the offsets entry point (see pretokenize.h).
#include "pretokenize.h"

#include "tensor.h"
#include "unicode_tables.h"

namespace lf::tok {

namespace {
AsciiClasses make_ascii() {
  AsciiClasses t{};
  for (uint32_t c = 0; c < 128; ++c) t.c[c] = cp_class_slow(c);
  return t;
}
}  // namespace

uint8_t cp_class_slow(uint32_t cp) {
  int lo = 0, hi = kNumCpRanges - 1;
  while (lo <= hi) {
    const int mid = (lo + hi) >> 1;
    if (cp < kCpRanges[mid].lo)
      hi = mid - 1;
    else if (cp > kCpRanges[mid].hi)
      lo = mid + 1;
    else
      return kCpRanges[mid].cls;
  }
  return kOther;
}

const AsciiClasses kAsciiClasses = make_ascii();

Pattern pattern_from_name(const std::string& name) {
  if (name == "gpt2") return Pattern::gpt2;
  if (name == "llama3") return Pattern::llama3;
  if (name == "qwen2") return Pattern::qwen2;
  throw ValueError("tokenizer: unknown pre-tokenizer pattern '" + name + "' (supported: gpt2, llama3, qwen2)");
}

const char* pattern_name(Pattern p) {
  switch (p) {
    case Pattern::gpt2: return "gpt2";
    case Pattern::llama3: return "llama3";
    case Pattern::qwen2: return "qwen2";
  }
  return "?";
}

std::vector<size_t> pretokenize_offsets(Pattern p, std::string_view text) {
  std::vector<size_t> out;
  split(p, reinterpret_cast<const uint8_t*>(text.data()), text.size(), [&](size_t b, size_t e) {
    out.push_back(b);
    out.push_back(e);
  });
  return out;
}

}  // namespace lf::tok
