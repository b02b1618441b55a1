"""Continuous batching over a paged KV cache: requests join and leave the running batch at
every step, so a short answer never waits for a long one.

    eng = Engine(model, num_blocks=1024, block_size=16, max_batch=16, tokenizer=tok)
    rid = eng.submit(prompt_ids, max_new_tokens=64, params=SamplingParams(temperature=0), stop_ids={eos}, seed=0,
                     stop=["\n\n"], on_token=callback)   # stop strings need the tokenizer
    results = eng.run()                  # {rid: Result(tokens, finish_reason, text)}
    for rid, tok in eng.stream(): ...    # tokens as they are produced
    eng.abort(rid)                       # drop a request (e.g. its client went away)

With a tokenizer every request also carries its text (generate.stop.TextStream: stop
strings cut it, stop tokens add nothing), and on_token(rid, token, text_delta,
finish_reason) is called for every produced token (finish_reason None until the last).

Each step: admit waiting requests while the block pool and max_batch allow and prefill
them (the prompt's keys/values written to its pages, attention over the prompt itself),
then one decode step for every running request (keys/values appended to the pages,
decode attention straight from the pages). Finished requests free their blocks at once.
Per-request seeded generators make sampling reproducible whatever else is in the batch.

A CPU float32 model the native decode step can run (generate/native.py: nn.Linear / Int4Linear
projections, no MoE) does both on it, over the same paged pools: one C++ call per step for the
whole batch, every weight row read once for all running requests. native=False keeps the Python
path (torch ops + the paged-KV ops).
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

import torch

from ..model.llama import apply_rope, rope_tables
from ..ops.paged_kv import paged_kv_gather
from .paged_cache import OutOfBlocksError, PagedKVCache
from .sampling import SamplingParams, sample
from .stop import TextStream, text_decoder


@dataclass
class Request:
    rid: int
    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams
    stop_ids: set
    generator: torch.Generator
    out: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    text: TextStream | None = None
    on_token: object = None


@dataclass
class Result:
    tokens: list[int]
    finish_reason: str          # "stop" | "length" | "abort"
    text: str | None = None     # with a tokenizer: the decoded text (stop string and stop token excluded)


class Engine:
    def __init__(self, model, num_blocks: int = 1024, block_size: int = 16, max_batch: int = 16,
                 dtype: torch.dtype = torch.float32, tokenizer=None, native: bool | None = None):
        self.model = model.eval()
        self.native = None      # the native decode step over the paged pools (generate/native.py)
        if native is not False and dtype == torch.float32:
            from .native import NativeDecoder, NotSupported
            try:
                self.native = NativeDecoder(model, max_len=1)
            except NotSupported:
                if native:
                    raise
        elif native:
            raise ValueError("native=True needs dtype=float32")
        self.tokenizer = tokenizer
        c = model.cfg
        self.cfg = c
        self.cache = PagedKVCache(num_blocks, c.n_kv_heads, c.head_dim, c.n_layers, block_size, dtype=dtype)
        self.max_batch = max_batch
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.done: dict[int, Result] = {}
        self._ids = itertools.count()
        self._events: list[tuple[int, int]] = []

    def submit(self, prompt: list[int], max_new_tokens: int = 64, params: SamplingParams | None = None,
               stop_ids=(), seed: int = 0, stop=None, on_token=None) -> int:
        if not prompt:
            raise ValueError("empty prompt")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if len(prompt) + max_new_tokens > self.cfg.max_seq_len:
            raise ValueError(f"prompt + max_new_tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        if any(not 0 <= t < self.cfg.vocab_size for t in prompt):
            raise ValueError("prompt has token ids outside the vocabulary")
        need = -(-(len(prompt) + max_new_tokens) // self.cache.block_size)
        if need > self.cache.num_blocks:
            raise ValueError(f"request needs {need} blocks; the pool has {self.cache.num_blocks}")
        if stop and self.tokenizer is None:
            raise ValueError("stop strings need an Engine with a tokenizer")
        text = TextStream(text_decoder(self.tokenizer), stop, stop_ids) if self.tokenizer is not None else None
        g = torch.Generator().manual_seed(seed)
        r = Request(next(self._ids), list(prompt), max_new_tokens, params or SamplingParams(), set(stop_ids), g,
                    text=text, on_token=on_token)
        self.waiting.append(r)
        return r.rid

    # ---- model pieces ------------------------------------------------------------------
    def _decode_attention(self, layer: int, attn, step, q: torch.Tensor) -> torch.Tensor:
        """Decode attention of q (B, n_heads, hd) over the pages (this step's tokens included): the
        paged kernel, or for soft-capped scores (Gemma 2) and sliding-window layers (Gemma 2 / 3) the
        gathered keys / values in torch ops."""
        if self.cfg.attn_softcap is None and attn.window is None:
            return self.cache.attention(layer, step, q, attn.scale)
        k = paged_kv_gather(self.cache.k_pools[layer], step.block_table, step.new_lens).transpose(1, 2)
        v = paged_kv_gather(self.cache.v_pools[layer], step.block_table, step.new_lens).transpose(1, 2)
        j, n = torch.arange(k.shape[2], device=q.device)[None], step.new_lens.long()[:, None]
        valid = j < n                                                       # (B, L): the query is at n - 1
        if attn.window is not None:
            valid &= j > n - 1 - attn.window
        return attn.attend(q[:, :, None], k, v, valid[:, None, None], band=False)[:, :, 0]

    def _qkv(self, attn, x, cos, sin):
        c = self.cfg
        B, T, _ = x.shape
        q = attn.heads(attn.q_proj(x), c.n_heads, "q_norm").transpose(1, 2)
        k = attn.heads(attn.k_proj(x), c.n_kv_heads, "k_norm").transpose(1, 2)
        v = attn.v_proj(x).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        if not attn.use_rope:   # SmolLM3's NoPE layers
            return q, k, v
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _native_step(self, step, seqs_tokens: list[list[int]]) -> torch.Tensor:
        """One native call: sequence i of the prepared step gets seqs_tokens[i] at its next positions;
        returns the logits of each sequence's last token."""
        tokens, positions, seqs, last = [], [], [], []
        for i, (toks, start) in enumerate(zip(seqs_tokens, step.seq_lens.tolist())):
            tokens += toks
            positions += range(start, start + len(toks))
            seqs += [i] * len(toks)
            last.append(len(tokens) - 1)
        return self.native.forward_paged(tokens, positions, seqs, step.block_table, self.cache.k_pools,
                                         self.cache.v_pools, last)

    @torch.no_grad()
    def _prefill_many(self, reqs: list[Request]) -> torch.Tensor:
        """Prefill newly admitted requests: natively in one call for all of them."""
        if self.native is None:
            return torch.stack([self._prefill(r) for r in reqs])
        step = self.cache.prepare([r.rid for r in reqs], [len(r.prompt) for r in reqs])
        logits = self._native_step(step, [r.prompt for r in reqs])
        self.cache.commit(step)
        return logits

    @torch.no_grad()
    def _prefill(self, req: Request) -> torch.Tensor:
        m, c = self.model, self.cfg
        T = len(req.prompt)
        step = self.cache.prepare([req.rid], T)
        x = m.embed(torch.tensor([req.prompt]))
        ropes = rope_tables(c, torch.arange(T)[None], x.dtype)
        for i, layer in enumerate(m.model.layers):
            h = layer.attn_input(x)
            q, k, v = self._qkv(layer.self_attn, h, *ropes[layer.local_rope])
            self.cache.append(i, step, k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous())
            y = layer.self_attn.attend(q, k, v)
            x = layer.attn_residual(x, layer.self_attn.o_proj(y.transpose(1, 2).reshape(1, T, -1)))
            x = layer.mlp_residual(x, layer.mlp_input(x))
        self.cache.commit(step)
        return m.logits(m.model.norm(x[:, -1:]))[0, 0]

    @torch.no_grad()
    def _decode(self, reqs: list[Request]) -> torch.Tensor:
        m = self.model
        ids = [r.rid for r in reqs]
        step = self.cache.prepare(ids, 1)
        if self.native is not None:
            logits = self._native_step(step, [[r.out[-1]] for r in reqs])
            self.cache.commit(step)
            return logits
        x = m.embed(torch.tensor([[r.out[-1]] for r in reqs]))
        ropes = rope_tables(self.cfg, step.seq_lens.long()[:, None], x.dtype)
        for i, layer in enumerate(m.model.layers):
            h = layer.attn_input(x)
            q, k, v = self._qkv(layer.self_attn, h, *ropes[layer.local_rope])
            self.cache.append(i, step, k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous())
            y = self._decode_attention(i, layer.self_attn, step, q[:, :, 0].contiguous())   # (B, n_heads, hd)
            x = layer.attn_residual(x, layer.self_attn.o_proj(y.reshape(len(reqs), 1, -1)))
            x = layer.mlp_residual(x, layer.mlp_input(x))
        self.cache.commit(step)
        return m.logits(m.model.norm(x))[:, 0]

    def _emit(self, req: Request, logits_row: torch.Tensor, tok: int | None = None) -> None:
        if tok is None:
            p = req.params
            hist = torch.tensor([req.prompt + req.out]) if p.penalized else None
            tok = int(sample(logits_row[None], p, req.generator, hist)[0])
        req.out.append(tok)
        self._events.append((req.rid, tok))
        delta = req.text.feed(tok) if req.text is not None else None
        if tok in req.stop_ids or (req.text is not None and req.text.stopped):
            req.finish_reason = "stop"
        elif len(req.out) >= req.max_new_tokens:
            req.finish_reason = "length"
        if req.finish_reason and req.text is not None:
            delta += req.text.finish()
        if req.on_token is not None:
            req.on_token(req.rid, tok, delta, req.finish_reason)

    def _emit_all(self, reqs: list[Request], logits: torch.Tensor) -> None:
        plain = all(r.params.temperature == 0 and not r.params.penalized for r in reqs)
        toks = logits.argmax(-1).tolist() if plain else [None] * len(reqs)   # greedy: one argmax for the batch
        for r, row, t in zip(reqs, logits, toks):
            self._emit(r, row, t)

    def abort(self, rid: int) -> bool:
        """Drop a waiting or running request (its blocks are freed); False if it is not in flight."""
        for r in self.waiting:
            if r.rid == rid:
                self.waiting.remove(r)
                self.done[rid] = Result(r.out, "abort", r.text.text if r.text is not None else None)
                return True
        for r in self.running:
            if r.rid == rid and not r.finish_reason:
                r.finish_reason = "abort"
                self._retire()
                return True
        return False

    def _retire(self) -> None:
        for r in [r for r in self.running if r.finish_reason]:
            self.running.remove(r)
            self.cache.free_sequence(r.rid)
            self.done[r.rid] = Result(r.out, r.finish_reason, r.text.text if r.text is not None else None)

    def step(self) -> None:
        # admit: reserve the whole request's blocks up front so a running request never starves
        admitted = []
        while self.waiting and len(self.running) < self.max_batch:
            r = self.waiting[0]
            need = -(-(len(r.prompt) + r.max_new_tokens) // self.cache.block_size)
            reserved = sum(-(-(len(x.prompt) + x.max_new_tokens) // self.cache.block_size)
                           - len(self.cache.blocks_of(x.rid)) for x in self.running)
            if need > self.cache.num_free_blocks - reserved:
                break
            self.waiting.popleft()
            self.cache.add_sequence(r.rid)
            self.running.append(r)       # counted in `reserved` from now on
            admitted.append(r)
        if admitted:
            self._emit_all(admitted, self._prefill_many(admitted))
        self._retire()
        active = [r for r in self.running if not r.finish_reason]
        if active:
            self._emit_all(active, self._decode(active))
        self._retire()
        if not admitted and not active and self.waiting:
            raise OutOfBlocksError("a waiting request does not fit the block pool")

    def run(self) -> dict[int, Result]:
        while self.waiting or self.running:
            self.step()
        return self.done

    def stream(self):
        """Yield (request id, token) as tokens are produced, until all requests finish."""
        while self.waiting or self.running:
            self.step()
            events, self._events = self._events, []
            yield from events
