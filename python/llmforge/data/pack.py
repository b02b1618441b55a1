"""Packing tokenised documents into fixed-length sequences, stored as memory-mapped shards.

    write_packed(out_dir, docs, seq_len=512, eos_id=0)       # docs: iterable of token lists
    ds = PackedDataset(out_dir, seed=0)                      # deterministic shuffle by seed
    for batch in ds.batches(8): ...                          # dict of torch tensors, see below
    state = ds.state_dict(); ds.load_state_dict(state)       # resume exactly where it stopped

Each sequence holds seq_len tokens; documents are laid end to end (each followed by
eos_id when given) and a document that does not fit continues in the next sequence.
The start offset of every document segment in a sequence is kept, so attention need
not cross documents: batches carry position_ids that restart at each segment and
cu_seqlens (flash-attention's varlen convention) over the flattened batch.
Optional per-token loss masks (SFT: assistant-only) travel with the tokens.

On disk (out_dir/):
    index.json                    version, seq_len, dtype, vocab bound, shards, totals (written last)
    shard_00000.tokens.bin        (n, seq_len) uint16 or uint32
    shard_00000.segs.bin          int32 pairs (sequence index within shard, start offset), sorted
    shard_00000.mask.bin          (n, seq_len) uint8, when masks were given
Files are written under temporary names and renamed, so a killed writer leaves no index
that points at partial shards.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

INDEX_VERSION = 1


@dataclass
class PackedSequence:
    tokens: np.ndarray        # (seq_len,)
    starts: list[int]         # document segment starts, starts[0] == 0
    mask: np.ndarray | None   # (seq_len,) uint8 loss mask or None


def pack_documents(docs, seq_len: int, eos_id: int | None = None, masks=None, drop_last: bool = True,
                   pad_id: int = 0):
    """Yield PackedSequence objects. masks (optional): one 0/1 list per document, same lengths."""
    if seq_len < 2:
        raise ValueError("seq_len must be >= 2")
    buf_t = np.empty(seq_len, dtype=np.int64)
    buf_m = np.empty(seq_len, dtype=np.uint8)
    fill, starts = 0, []
    use_mask = masks is not None
    mask_iter = iter(masks) if use_mask else None
    for di, doc in enumerate(docs):
        toks = np.asarray(doc, dtype=np.int64).reshape(-1)
        m = None
        if use_mask:
            try:
                m = np.asarray(next(mask_iter), dtype=np.uint8).reshape(-1)
            except StopIteration:
                raise ValueError(f"fewer masks than documents (document {di})") from None
            if m.shape != toks.shape:
                raise ValueError(f"document {di}: mask length {m.size} != token count {toks.size}")
        if toks.size and toks.min() < 0:
            raise ValueError(f"document {di} has negative token ids")
        if eos_id is not None:
            toks = np.append(toks, eos_id)
            if use_mask:
                m = np.append(m, m[-1] if m.size else 0)  # eos is trained iff the doc's last token is
        pos = 0
        while pos < toks.size:
            starts.append(fill)
            take = min(seq_len - fill, toks.size - pos)
            buf_t[fill:fill + take] = toks[pos:pos + take]
            if use_mask:
                buf_m[fill:fill + take] = m[pos:pos + take]
            fill += take
            pos += take
            if fill == seq_len:
                yield PackedSequence(buf_t.copy(), starts, buf_m.copy() if use_mask else None)
                fill, starts = 0, []
    if fill and not drop_last:
        buf_t[fill:] = pad_id
        if use_mask:
            buf_m[fill:] = 0
        starts.append(fill)  # padding is its own segment
        yield PackedSequence(buf_t.copy(), starts, buf_m.copy() if use_mask else None)


def _atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_packed(out_dir: str | os.PathLike, docs, seq_len: int, eos_id: int | None = None, masks=None,
                 vocab_size: int | None = None, shard_sequences: int = 4096, drop_last: bool = True) -> dict:
    """Pack and write shards; returns the index dict."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    dtype = np.uint16 if (vocab_size is not None and vocab_size <= 65536) else np.uint32
    shards, cur, total_tokens, n_docs_segments = [], [], 0, 0
    max_id = -1

    def flush():
        nonlocal cur
        if not cur:
            return
        name = f"shard_{len(shards):05d}"
        toks = np.stack([s.tokens for s in cur])
        if toks.max() > np.iinfo(dtype).max:
            raise ValueError(f"token id {toks.max()} does not fit {np.dtype(dtype).name}; pass vocab_size")
        segs = np.array([(i, st) for i, s in enumerate(cur) for st in s.starts], dtype=np.int32).reshape(-1, 2)
        _atomic_write(os.path.join(out_dir, name + ".tokens.bin"), toks.astype(dtype).tobytes())
        _atomic_write(os.path.join(out_dir, name + ".segs.bin"), segs.tobytes())
        if cur[0].mask is not None:
            _atomic_write(os.path.join(out_dir, name + ".mask.bin"), np.stack([s.mask for s in cur]).tobytes())
        shards.append({"name": name, "n": len(cur), "n_segments": int(segs.shape[0])})
        cur = []

    for seq in pack_documents(docs, seq_len, eos_id, masks, drop_last):
        max_id = max(max_id, int(seq.tokens.max()))
        if vocab_size is not None and max_id >= vocab_size:
            raise ValueError(f"token id {max_id} >= vocab_size {vocab_size}")
        cur.append(seq)
        total_tokens += seq_len
        n_docs_segments += len(seq.starts)
        if len(cur) == shard_sequences:
            flush()
    flush()
    if not shards:
        raise ValueError("no complete sequence: the documents hold fewer than seq_len tokens")
    index = {"version": INDEX_VERSION, "seq_len": seq_len, "dtype": np.dtype(dtype).name,
             "vocab_size": vocab_size, "eos_id": eos_id, "has_mask": masks is not None, "shards": shards,
             "n_sequences": sum(s["n"] for s in shards), "n_tokens": total_tokens, "n_segments": n_docs_segments}
    _atomic_write(os.path.join(out_dir, "index.json"), json.dumps(index, indent=1).encode())
    return index


class PackedDataset:
    """Memory-mapped packed shards with a deterministic, resumable shuffled order."""

    def __init__(self, path: str | os.PathLike, seed: int = 0, shuffle: bool = True, doc_mask: bool = True):
        """doc_mask=False: batches carry no position_ids, so a model attends across the documents
        of a sequence (GPT-style pretraining on a continuous stream, eos between documents)."""
        self.path = os.fspath(path)
        self.doc_mask = doc_mask
        ipath = os.path.join(self.path, "index.json")
        try:
            with open(ipath, encoding="utf-8") as f:
                self.index = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{ipath}: no packed dataset here (index.json missing)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{ipath}: corrupt index: {e}") from None
        if not isinstance(self.index, dict) or self.index.get("version") != INDEX_VERSION:
            raise ValueError(f"{ipath}: unsupported index version {getattr(self.index, 'get', dict().get)('version')}")
        try:
            self.seq_len = int(self.index["seq_len"])
            dtype = np.dtype(self.index["dtype"])
            vocab = self.index.get("vocab_size")
            self.vocab_size = None if vocab is None else int(vocab)
            shards = [(str(sh["name"]), int(sh["n"]), int(sh["n_segments"])) for sh in self.index["shards"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{ipath}: corrupt index ({type(e).__name__}: {e})") from None
        if self.seq_len <= 0 or dtype not in (np.uint16, np.uint32) or not shards or \
                any(n < 0 or ns < 0 or os.path.basename(name) != name for name, n, ns in shards):
            raise ValueError(f"{ipath}: corrupt index (seq_len, dtype or shard entries out of range)")
        self._tokens, self._segs, self._masks, self._offsets = [], [], [], [0]
        for name, n, n_segments in shards:
            base = os.path.join(self.path, name)
            t = self._map(base + ".tokens.bin", dtype, (n, self.seq_len))
            s = self._map(base + ".segs.bin", np.int32, (n_segments, 2))
            self._check_segments(base + ".segs.bin", s, n)
            self._tokens.append(t)
            self._segs.append(s)
            self._masks.append(self._map(base + ".mask.bin", np.uint8, (n, self.seq_len))
                               if self.index.get("has_mask") else None)
            self._offsets.append(self._offsets[-1] + n)
        self.n = self._offsets[-1]
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order = None

    def _check_segments(self, path, segs, n):
        """Rows ascending in [0, n), each row's starts rising from 0 and below seq_len: the
        lookups in get() and the document masks built from them rely on it."""
        rows, starts = segs[:, 0].astype(np.int64), segs[:, 1].astype(np.int64)
        first = np.ones(len(rows), dtype=bool)
        first[1:] = rows[1:] != rows[:-1]
        ok = (len(rows) == 0 and n == 0) or (
            rows[0] == 0 and rows[-1] == n - 1 and bool((np.diff(rows) >= 0).all())
            and bool((np.diff(rows) <= 1).all()) and bool((starts[first] == 0).all())
            and bool((starts >= 0).all()) and bool((starts < self.seq_len).all())
            and bool((np.diff(starts)[~first[1:]] > 0).all()))
        if not ok:
            raise ValueError(f"{path}: corrupt segment table (rows must ascend through all {n} sequences, "
                             f"each row's starts rise from 0 below seq_len {self.seq_len})")

    @staticmethod
    def _map(path, dtype, shape):
        want = int(np.prod(shape)) * np.dtype(dtype).itemsize
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: shard file missing") from None
        if size != want:
            raise ValueError(f"{path}: corrupt shard ({size} bytes, expected {want})")
        if want == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    def __len__(self) -> int:
        return self.n

    def get(self, i: int) -> PackedSequence:
        if not 0 <= i < self.n:
            raise IndexError(i)
        sh = int(np.searchsorted(self._offsets, i, side="right") - 1)
        j = i - self._offsets[sh]
        segs = self._segs[sh]
        lo, hi = np.searchsorted(segs[:, 0], [j, j + 1])
        starts = segs[lo:hi, 1].tolist()
        mask = None if self._masks[sh] is None else np.asarray(self._masks[sh][j])
        tokens = np.asarray(self._tokens[sh][j], dtype=np.int64)
        if self.vocab_size is not None and tokens.max() >= self.vocab_size:
            raise ValueError(f"{self.path}: sequence {i} holds token id {int(tokens.max())} >= vocab_size "
                             f"{self.vocab_size} (corrupt shard?)")
        return PackedSequence(tokens, starts, mask)

    def order(self) -> np.ndarray:
        if self._order is None or self._order[0] != self.epoch:
            perm = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                    else np.arange(self.n))
            self._order = (self.epoch, perm)
        return self._order[1]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n") != self.n or state.get("seed") != self.seed:
            raise ValueError("state was saved for a different dataset or seed")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

    def next_indices(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            order = self.order()
            take = min(k - len(out), self.n - self.pos)
            out.extend(order[self.pos:self.pos + take].tolist())
            self.pos += take
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def next_batch(self, batch_size: int) -> dict:
        """input_ids (B, L) int64, position_ids (B, L), cu_seqlens (S+1,) int32 over the flattened
        batch, loss_mask (B, L) bool (all True without stored masks; False on padding segments is
        the caller's choice via eos handling)."""
        import torch

        seqs = [self.get(i) for i in self.next_indices(batch_size)]
        L = self.seq_len
        ids = torch.from_numpy(np.stack([s.tokens for s in seqs]))
        pos = np.empty((len(seqs), L), dtype=np.int64)
        cu = [0]
        for b, s in enumerate(seqs):
            bounds = s.starts + [L]
            for a, e in zip(bounds, bounds[1:]):
                pos[b, a:e] = np.arange(e - a)
                cu.append(b * L + e)
        mask = (torch.from_numpy(np.stack([s.mask for s in seqs])).bool() if seqs[0].mask is not None
                else torch.ones(len(seqs), L, dtype=torch.bool))
        out = {"input_ids": ids, "position_ids": torch.from_numpy(pos),
               "cu_seqlens": torch.tensor(cu, dtype=torch.int32), "loss_mask": mask}
        if not self.doc_mask:
            del out["position_ids"], out["cu_seqlens"]
        return out

    def batches(self, batch_size: int, steps: int | None = None):
        k = 0
        while steps is None or k < steps:
            yield self.next_batch(batch_size)
            k += 1
