"""Packing, shards, deterministic shuffling and exact resume."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from llmforge.data.pack import PackedDataset, pack_documents, write_packed


def _docs(n=60, seed=0, vocab=1000):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=int(rng.integers(1, 90))).tolist() for _ in range(n)]


def test_packing_preserves_every_token_in_order():
    docs = _docs()
    seqs = list(pack_documents(docs, seq_len=37, eos_id=0, drop_last=False))
    flat = np.concatenate([s.tokens for s in seqs])
    want = np.concatenate([np.append(d, 0) for d in docs])
    assert np.array_equal(flat[: want.size], want) and (flat[want.size:] == 0).all()
    # segment starts reconstruct document boundaries
    lens, cur = [], 0
    for s in seqs:
        bounds = s.starts + [37]
        for a, e in zip(bounds, bounds[1:]):
            lens.append(e - a)
    assert all(s.starts[0] == 0 for s in seqs)
    assert sum(lens) == 37 * len(seqs)


def test_masks_follow_tokens():
    docs = [[5, 6, 7], [8, 9]]
    masks = [[0, 1, 1], [0, 1]]
    seqs = list(pack_documents(docs, 4, eos_id=2, masks=masks, drop_last=False))
    assert seqs[0].tokens.tolist() == [5, 6, 7, 2] and seqs[0].mask.tolist() == [0, 1, 1, 1]
    assert seqs[1].tokens.tolist() == [8, 9, 2, 0] and seqs[1].mask.tolist() == [0, 1, 1, 0]
    with pytest.raises(ValueError, match="mask length"):
        list(pack_documents([[1, 2]], 4, masks=[[1]]))
    with pytest.raises(ValueError, match="negative"):
        list(pack_documents([[1, -2]], 4))


def test_shards_roundtrip_and_batches(tmp_path):
    docs = _docs(200)
    idx = write_packed(tmp_path, docs, seq_len=64, eos_id=0, vocab_size=1000, shard_sequences=7)
    assert idx["dtype"] == "uint16" and len(idx["shards"]) > 2
    expect = list(pack_documents(docs, 64, 0))
    ds = PackedDataset(tmp_path, shuffle=False)
    assert len(ds) == len(expect)
    for i in (0, 6, 7, len(ds) - 1):
        got = ds.get(i)
        assert np.array_equal(got.tokens, expect[i].tokens) and got.starts == expect[i].starts
    b = ds.next_batch(3)
    assert b["input_ids"].shape == (3, 64)
    # position ids restart at every segment; cu_seqlens covers the flattened batch
    cu = b["cu_seqlens"].tolist()
    assert cu[0] == 0 and cu[-1] == 3 * 64
    flat_pos = b["position_ids"].reshape(-1)
    for a, e in zip(cu, cu[1:]):
        assert torch.equal(flat_pos[a:e], torch.arange(e - a))


def test_deterministic_shuffle_and_exact_resume(tmp_path):
    write_packed(tmp_path, _docs(300, 1), seq_len=32, eos_id=0, vocab_size=1000)
    a = PackedDataset(tmp_path, seed=7)
    run = [a.next_batch(4)["input_ids"] for _ in range(30)]   # crosses an epoch boundary
    b = PackedDataset(tmp_path, seed=7)
    for _ in range(11):
        b.next_batch(4)
    state = json.loads(json.dumps(b.state_dict()))
    c = PackedDataset(tmp_path, seed=7)
    c.load_state_dict(state)
    for k in range(11, 30):
        assert torch.equal(c.next_batch(4)["input_ids"], run[k])
    other = PackedDataset(tmp_path, seed=8)
    assert not torch.equal(other.next_batch(4)["input_ids"], run[0])
    with pytest.raises(ValueError, match="different dataset or seed"):
        other.load_state_dict(state)


def test_corrupt_and_missing_files(tmp_path):
    write_packed(tmp_path, _docs(100), seq_len=16, eos_id=0, vocab_size=1000)
    tok = tmp_path / "shard_00000.tokens.bin"
    data = tok.read_bytes()
    tok.write_bytes(data[:-3])
    with pytest.raises(ValueError, match="corrupt shard"):
        PackedDataset(tmp_path)
    os.remove(tok)
    with pytest.raises(FileNotFoundError, match="shard file missing"):
        PackedDataset(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt index"):
        PackedDataset(tmp_path)
    with pytest.raises(FileNotFoundError):
        PackedDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="fewer than seq_len"):
        write_packed(tmp_path / "x", [[1, 2]], seq_len=16)
    with pytest.raises(ValueError, match="vocab_size"):
        write_packed(tmp_path / "y", [[1, 2000] * 20], seq_len=16, vocab_size=1000)


def test_damaged_shards_raise_valueerror_or_read_within_bounds(tmp_path):
    """Random damage to the index, the segment tables or the tokens: opening or reading raises
    ValueError naming the dataset, or every sequence read has in-vocabulary tokens and segment
    starts that rise from 0 below seq_len (what the document masks are built from)."""
    from ..damage import damaged_copies

    src = tmp_path / "src"
    write_packed(src, _docs(80, 3), seq_len=24, eos_id=0, vocab_size=1000, shard_sequences=40)
    raised = 0
    for work in damaged_copies(src, str(tmp_path / "work"), np.random.default_rng(4), 120, head=400):
        try:
            ds = PackedDataset(work, shuffle=False)
            for i in range(len(ds)):
                s = ds.get(i)
                assert 0 <= s.tokens.min() and s.tokens.max() < 1000
                assert s.starts[0] == 0 and all(a < b for a, b in zip(s.starts, s.starts[1:])) and s.starts[-1] < 24
        except ValueError as e:
            assert work in str(e), e
            raised += 1
    assert raised >= 50
