"""Decode under a CUDA graph: one token's forward with every shape fixed, captured once and replayed per token.

At batch 1 a decode step of a small model is bound by kernel launches and Python, not by the bytes it reads: an
H200 spends 60-90 ms a token on the 135M default model at any context length, sparse or dense. A CUDA graph
replays a step's kernels from one launch, but it fixes every shape, address and Python decision at capture. So
the fixed step:
- works on the cache's whole preallocated buffers (`capacity` rows); K/V and the indexer key are written at the
  position held in a tensor (`index_copy_`), never appended;
- recomputes the current 64-token block's indexer-key sum the way `IndexerKeys.append` does (same padded shape,
  so the same bits);
- selects over every block and a fixed number of candidates, masking what lies past the position, and keeps the
  keys `select.select_last` keeps (tested: identical keep sets; exact ties follow `select._tiebreak`);
- attends over a fixed [sink | top_k picks | local window] gather with a validity mask; dense layers (and every
  layer in "dense" mode, the benchmark's baseline) attend the whole buffer with the positions past the query masked.
The cache's Python-side lengths advance after each step, so eager and fixed steps mix freely. Batch 1 only.
`GraphDecoder(..., graph=False)` runs the same fixed step without a graph, on any device (what the CPU tests check).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

from .cache import DSACache, cache_arg
from .config import DSAConfig
from .rope import rope_cos_sin
from .select import NEG, _tiebreak

CHUNK = 1024  # keys per chunk of a dense layer's split attention


@dataclass
class Fixed:
    """Set on `DSAState.fixed` while a fixed-shape step runs: what every layer needs beyond its inputs."""

    pos: torch.Tensor  # [1] long: the position being decoded
    base: DSACache
    rows: int  # K/V rows dense attention reads (a multiple of CHUNK, >= the capacity)
    counts: torch.Tensor | None = None  # [blocks, 1] fp32 block_size: block means divide as IndexerKeys' do
    rope: tuple | None = None  # the indexer's (cos, sin) at pos, computed once per step
    indexer: bool = True  # False: "dense" mode without the indexer (a benchmark's baseline; its keys fall behind)
    # layer -> (chosen [kt], scores [kt], ok [kt], blocks [kb], blocks_ok [kb]): the step's picks, for the record
    picks: dict[int, tuple] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # what depends only on pos: built once per step


class _View(Cache):
    """What the model's attention modules see during a fixed step: `update` writes the new K/V row at `pos` into the
    base cache's buffers and hands back the whole buffers (shapes fixed by the capacity)."""

    def __init__(self, base: DSACache, pos: torch.Tensor) -> None:
        Cache.__init__(self, layers=base.layers)  # shared, for transformers' per-layer queries (sliding, linear)
        self.base, self.pos = base, pos

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.base.layers[layer_idx]
        kb, vb = layer._k.buf, layer._v.buf  # [1, Hkv, cap, D]
        kb.index_copy_(2, self.pos, key_states.to(kb.dtype))
        vb.index_copy_(2, self.pos, value_states.to(vb.dtype))
        return kb, vb


def padded(capacity: int) -> int:
    """The rows a GraphDecoder needs for `capacity` tokens: allocate the cache with this many (`new_cache`) and it is
    never copied to make room."""
    return -(-capacity // CHUNK) * CHUNK


def min_length(cfg: DSAConfig) -> int:
    """The shortest context (keys, the new token included) the fixed step serves: where `select_last` applies (the
    sink blocks and the local window's blocks do not meet) and DSA does not simply keep every key."""
    if cfg.local_window < 1:
        return 1 << 62
    ns = -(-cfg.sink_tokens // cfg.block_size)
    return max(cfg.local_window + ns * cfg.block_size, cfg.sink_tokens + 1,
               min(cfg.top_k, cfg.n_blocks * cfg.block_size) + 1)


def attend(module, fixed: Fixed, cfg: DSAConfig, layer: int, x: torch.Tensor, query: torch.Tensor,
           key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
    """One layer of the fixed step. x [1, 1, hidden]; query [1, H, 1, D]; key/value [1, Hkv, cap, D] (whole buffers)
    -> [1, 1, H, D]."""
    q = query[0, :, 0]  # [H, D]
    k, v = key[0], value[0]  # [Hkv, cap, D]
    sparse = cfg.is_sparse_layer(layer)
    if not sparse or cfg.mode == "dense":
        if sparse and fixed.indexer:  # the indexer still runs in dense mode, as eager decoding does
            _index_key(module, fixed, cfg, layer, x)
        k, v = k[:, : fixed.rows], v[:, : fixed.rows]
        keep = torch.arange(fixed.rows, device=q.device) <= fixed.pos  # [rows]
        return _attend_split(q, k, v, keep, scaling).view(1, 1, *q.shape)
    tokens, keep = _select(module, fixed, cfg, layer, x)
    kg, vg = k.index_select(1, tokens), v.index_select(1, tokens)  # [Hkv, T, D]
    return _attend(q, kg, vg, keep, scaling).view(1, 1, *q.shape)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, scaling: float) -> torch.Tensor:
    """q [H, D] over k/v [Hkv, T, D] where keep [T] -> [H, D]; GQA by grouping heads (as `attention._attend_one`)."""
    H, D = q.shape
    Hkv = k.shape[0]
    s = torch.bmm(q.view(Hkv, H // Hkv, D) * scaling, k.to(q.dtype).transpose(1, 2))  # [Hkv, G, T]
    p = torch.softmax(s.float().masked_fill(~keep, NEG), dim=-1).to(q.dtype)
    return torch.bmm(p, v.to(q.dtype)).view(H, D)


def _attend_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, scaling: float,
                  n: int = CHUNK) -> torch.Tensor:
    """Dense attention of one query over a long buffer, split into n-key chunks that are reduced apart and then
    merged by their maxima (flash-decoding in tensor ops): one [T]-long reduction would run on a handful of GPU
    blocks. q [H, D]; k/v [Hkv, T, D] with T % n == 0; keep [T] -> [H, D]."""
    H, D = q.shape
    Hkv, T, _ = k.shape
    C = T // n
    kc, vc = k.to(q.dtype).view(Hkv, C, n, D), v.to(q.dtype).view(Hkv, C, n, D)
    s = torch.matmul(q.view(Hkv, 1, H // Hkv, D) * scaling, kc.transpose(-1, -2)).float()  # [Hkv, C, G, n]
    s = s.masked_fill(~keep.view(1, C, 1, n), NEG)
    m = s.amax(-1, keepdim=True).clamp(min=-1e30)  # [Hkv, C, G, 1]; a chunk wholly past pos: exp(s - m) = 0
    e = torch.exp(s - m)
    o = torch.matmul(e.to(q.dtype), vc).float()  # [Hkv, C, G, D]
    w = torch.exp(m - m.amax(1, keepdim=True))  # each chunk's weight against the largest maximum
    return ((o * w).sum(1) / (e.sum(-1, keepdim=True) * w).sum(1)).to(q.dtype).view(H, D)


def step_masks(pos: torch.Tensor, cfg: DSAConfig, keys: int, blocks: int) -> dict[str, torch.Tensor]:
    """Positions and masks that depend only on pos, shared by every sparse layer of a step (a graph replays each
    kernel: built per layer they cost ~20 launches a layer). keys / blocks: rows of the indexer-key / block-sum
    buffers."""
    bs, dev = cfg.block_size, pos.device
    ns = -(-cfg.sink_tokens // bs)
    ar = torch.arange(bs, device=dev)
    bi = pos // bs  # [1], the block being written
    rows = bi * bs + ar  # its positions
    local_lo = (pos - cfg.local_window + 1).clamp(min=0)  # [1]
    fl = local_lo // bs  # blocks [fl, ...) reach into the local window
    bidx = torch.arange(blocks, device=dev)
    c_loc = fl * bs + ar  # the local blocks' tokens before the window are candidates
    return {"ar": ar, "bi": bi, "rows": rows.clamp(max=keys - 1), "rows_ok": rows <= pos,
            "free": (bidx >= ns) & (bidx < fl), "bstart": bidx * bs,  # stage 1: blocks [ns, fl) compete
            "c_sink": torch.arange(cfg.sink_tokens, ns * bs, device=dev), "c_loc": c_loc, "loc_ok": c_loc < local_lo,
            "sink_ok": torch.ones(ns * bs - cfg.sink_tokens, dtype=torch.bool, device=dev),
            "sink": torch.arange(cfg.sink_tokens, device=dev),
            "local": local_lo + torch.arange(cfg.local_window, device=dev),
            "forced": torch.ones(cfg.sink_tokens + cfg.local_window, dtype=torch.bool, device=dev)}


def _index_key(module, fixed: Fixed, cfg: DSAConfig, layer: int, x: torch.Tensor):
    """Run the indexer at pos, write its key and the current block's key sum -> (q [H_I, d_I], w [H_I]) fp32."""
    pos, bs = fixed.pos, cfg.block_size
    qi, wi, ki = module.indexer(x, pos, fixed.rope)  # [1, 1, H_I, d_I], [1, 1, H_I], [1, 1, d_I]
    ik = fixed.base.index_keys[layer]
    keys, sums = ik.keys.buf[0], ik.block_sums.buf[0]  # [cap, d_I], [n_blocks_cap, d_I]
    keys.index_copy_(0, pos, ki[0].to(keys.dtype))
    m = fixed.masks
    blk = keys.index_select(0, m["rows"]).float()  # the written block's keys
    blk = torch.where(m["rows_ok"][:, None], blk, 0.0)  # zero past pos, as IndexerKeys.append pads
    sums.index_copy_(0, m["bi"], blk.view(1, 1, bs, -1).sum(2)[0])
    return qi[0, 0].float(), wi[0, 0].float()


def _select(module, fixed: Fixed, cfg: DSAConfig, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`select.select_last` with fixed shapes -> (tokens [sink + kt + local], keep [same]) to gather and attend."""
    qf, wf = _index_key(module, fixed, cfg, layer, x)
    ik = fixed.base.index_keys[layer]
    keys, sums = ik.keys.buf[0], ik.block_sums.buf[0]
    bs, m = cfg.block_size, fixed.masks

    # stage 1 over the free blocks [ns, fl) (all full: mean = sum / bs), every other block masked
    nbc = m["free"].shape[0]  # blocks every layer holds (more than pos has reached)
    means = sums[:nbc] / fixed.counts[:nbc]
    bscore = _tiebreak((wf @ F.relu(qf @ means.T))[None], m["bstart"])[0].masked_fill(~m["free"], NEG)
    bval, picks = bscore.topk(min(cfg.n_blocks, nbc))  # [kb]
    bok = bval > NEG

    # stage 2 over the rest of the sink blocks, the kept blocks' tokens and the local blocks' tokens before the window
    cand = torch.cat([m["c_sink"], (picks[:, None] * bs + m["ar"]).flatten(), m["c_loc"]])  # [M]
    valid = torch.cat([m["sink_ok"], bok[:, None].expand(-1, bs).flatten(), m["loc_ok"]])
    cand = torch.where(valid, cand, 0).clamp(max=keys.shape[0] - 1)
    tscore = wf @ F.relu(qf @ keys.index_select(0, cand).float().T)  # [M]
    tscore = _tiebreak(tscore[None], cand)[0].masked_fill(~valid, NEG)
    tval, tidx = tscore.topk(min(cfg.top_k, cand.shape[0]))  # [kt]
    ok = tval > NEG
    chosen = cand[tidx]
    fixed.picks[layer] = (chosen, tval, ok, picks, bok)

    tokens = torch.cat([m["sink"], torch.where(ok, chosen, 0), m["local"]])
    keep = torch.cat([m["forced"][: cfg.sink_tokens], ok, m["forced"][cfg.sink_tokens :]])
    return tokens, keep


class GraphDecoder:
    """Decode steps of a DSA model over `cache` (batch 1): under a CUDA graph on a GPU (`graph=None`), else the
    same fixed-shape step run eagerly. Steps before `min_length` (or past `capacity`) run the model as usual.

        dec = GraphDecoder(model, cache, capacity=len(prompt) + max_new_tokens)
        logits = dec.step(token_id)   # [vocab], the next token's logits; the cache now holds the token
    """

    def __init__(self, model, cache: DSACache, capacity: int, graph: bool | None = None, indexer: bool = True) -> None:
        self.model, self.cache, self.capacity = model, cache, capacity
        self.state = model.dsa_state
        if not indexer and self.state.config.mode != "dense":
            raise ValueError("GraphDecoder(indexer=False) is a dense-mode baseline: sparse attention needs the indexer")
        dev = next(model.parameters()).device
        self.graph = dev.type == "cuda" if graph is None else graph
        self.min_length = min_length(self.state.config)
        self._sparse_layers = sum(self.state.config.is_sparse_layer(i) for i in range(len(cache.layers)))
        rows = padded(capacity)
        cache.reserve(rows)  # every buffer holds `rows` rows from now on: a graph reads them whole
        self.tok = torch.zeros(1, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.fixed = Fixed(self.pos, cache, rows, indexer=indexer)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._logits: torch.Tensor | None = None
        self._buffers: tuple = ()  # (address, rows) of every buffer the fixed step last saw
        cfg = model.config
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        # eager only: dynamic RoPE decides in Python from the length; a sliding window past its size is refused there
        self._eager_only = "dynamic" in str(rope.get("rope_type", rope.get("type", "")))
        self._window = getattr(cfg, "sliding_window", None)

    def fits(self, position: int) -> bool:
        """Does the fixed step serve the token at `position`?"""
        return (self.min_length <= position + 1 <= self.capacity and not self._eager_only
                and (self._window is None or position + 1 <= self._window)
                and not self.state.reference and os.environ.get("DSA_REFERENCE") != "1"
                and all(layer._k.buf is not None for layer in self.cache.layers))

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        """Feed one token -> the logits [vocab] after it, recording its selections when a recorder wants them. Under a
        graph the logits are the graph's output buffer, overwritten by the next step: copy what you keep."""
        p = self.cache.get_seq_length()
        rec = self.state.recorder
        recording = rec is not None and rec.wants(p)
        if not self.fits(p) or (recording and (rec.weighting != "picks" or self.state.config.mode == "dense")):
            ids = torch.tensor([[token]], device=self.tok.device)
            return self.model(ids, **cache_arg(self.cache), use_cache=True).logits[0, -1]
        buffers = self._buffer_list()
        if self._buffers != tuple((b.buf.data_ptr(), b.buf.shape[-2]) for b in buffers):  # new or moved buffers:
            self._graph = None  # a graph holds the old addresses
            for b in buffers:  # rows past the length are masked, but NaN garbage would survive p = 0
                b.buf[..., b.length :, :].zero_()
            self._buffers = tuple((b.buf.data_ptr(), b.buf.shape[-2]) for b in buffers)
            blocks = max((ik.block_sums.buf.shape[1] for ik in self.cache.index_keys if ik.block_sums.buf is not None),
                         default=0)
            self.fixed.counts = torch.full((blocks, 1), float(self.state.config.block_size), device=self.pos.device)
        self.tok.fill_(token)
        self.pos.fill_(p)
        timings, self.state.timings = self.state.timings, None  # no per-phase timer inside a fixed step
        t = time.perf_counter()
        try:
            if self.graph:
                if self._graph is None:
                    self._capture()
                self._graph.replay()
                logits = self._logits
            else:
                logits = self._forward()
        finally:
            self.state.timings = timings
        if timings is not None:  # the whole step as one phase
            if self.graph:
                torch.cuda.synchronize()
            timings["fixed_step"] = timings.get("fixed_step", 0.0) + time.perf_counter() - t
        self._advance(p + 1)
        cfg = self.state.config
        path = "dense" if cfg.mode == "dense" else "graph" if self.graph else "fixed"
        self.state.paths[path] = self.state.paths.get(path, 0) + self._sparse_layers  # as eager counts queries
        if recording:
            self._record(rec, p)
        return logits

    def _forward(self) -> torch.Tensor:
        cfg = self.state.config
        self.fixed.rope = rope_cos_sin(self.pos, cfg.rope_dim, cfg.rope_theta)
        held = [ik for ik in self.cache.index_keys if ik.keys.buf is not None]
        if held:  # every layer's buffers hold at least this many rows
            self.fixed.masks = step_masks(self.pos, cfg, min(ik.keys.buf.shape[1] for ik in held),
                                          min(ik.block_sums.buf.shape[1] for ik in held))
        self.state.fixed = self.fixed
        try:
            out = self.model(self.tok, position_ids=self.pos[None], **cache_arg(_View(self.cache, self.pos)),
                             use_cache=True)
        finally:
            self.state.fixed = None
        return out.logits[0, -1]

    def _capture(self) -> None:
        """Warm up on a side stream (lazy initialisation, allocator), then capture one step. Every run computes the
        same step at the same position, so the warm-ups' writes are the ones the replay makes."""
        with torch.cuda.device(self.pos.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._forward()
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self._logits = self._forward()
        self._graph = g

    def _buffer_list(self) -> list:
        c = self.cache
        bufs = [b for layer in c.layers for b in (layer._k, layer._v)]
        return bufs + [b for ik in c.index_keys if ik.keys.buf is not None for b in (ik.keys, ik.block_sums)]

    def _advance(self, n: int) -> None:
        """The cache's Python-side lengths (and views) to n tokens, as if `update` had appended the step's rows."""
        bs = self.state.config.block_size
        for layer in self.cache.layers:
            layer._k.length = layer._v.length = n
            layer.keys, layer.values = layer._k.view, layer._v.view
        for ik in self.cache.index_keys if self.fixed.indexer else ():
            if ik.keys.buf is not None:
                ik.keys.length, ik.block_sums.length = n, -(-n // bs)

    def _record(self, rec, p: int) -> None:
        """The step's picks in `select_last`'s record form: ascending positions, their scores, the kept blocks."""
        qpos = torch.tensor([p], device=self.pos.device)
        width = min(self.state.config.n_blocks, -(-(p + 1) // self.state.config.block_size))  # as select_last's
        for layer, (chosen, tval, ok, picks, bok) in self.fixed.picks.items():
            order = chosen[ok].argsort()
            blocks = torch.full((width,), -1, dtype=picks.dtype, device=picks.device)
            kept = picks[bok].sort().values
            blocks[: kept.shape[0]] = kept
            rec.add(layer, 0, qpos, chosen[ok][order][None], tval[ok][order][None], blocks[None])
