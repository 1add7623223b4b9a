"""The attention function DSA registers with transformers (`attn_implementation="dsa"`).

The model's own attention module still computes q, k, v, RoPE and the KV-cache update; this function
receives them and decides what each query reads. Per sparse layer it runs the lightning indexer on the
layer's normalised input (stashed by a forward pre-hook), selects per chunk of `query_chunk` queries
(decode is a chunk of one), gathers only the selected keys/values and attends to them. No L x L score
matrix is ever built on the sparse path.
"""

from __future__ import annotations

import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from . import flex, graph_decode, kernels
from .cache import DSACache
from .config import DSAConfig
from .record import SelectionRecorder
from .rope import rope_cos_sin
from .select import chosen_record, select_all_dense, select_chunk, select_last


@dataclass
class DSAState:
    """Shared by every layer of one model: config, the optional recorder and the optional phase timer."""

    config: DSAConfig
    recorder: SelectionRecorder | None = None
    timings: dict[str, float] | None = None  # phase -> seconds, when profiling
    inputs: dict[int, tuple] = field(default_factory=dict)  # layer -> (hidden_states, cache), set by the hook
    # training/evaluation tap: called as capture(layer, x, query, key) with the layer's normalised input and
    # post-RoPE query [B, H, Lq, D] / key [B, Hkv, Lk, D], before attention (see dsa.train)
    capture: Callable | None = None
    rope: tuple | None = None  # ((start, end, device), (cos, sin)): the indexer's RoPE, computed once per forward
    fixed: object | None = None  # a fixed-shape decode step is running (dsa.graph_decode.Fixed)
    reference: bool = False  # every query through the reference path (select_chunk + SDPA): see select.py
    # queries served by each path ("kernel", "flex", "torch", "dense") and the kernel's own counts, summed over
    # sparse layers until reset: what produced an answer's attention, for its log
    paths: dict[str, int] = field(default_factory=dict)


_warned_slow = False


def _warn_slow_path(reason: str) -> None:
    """One warning per process when a CPU sparse forward runs on the PyTorch path (slower than dense prefill)."""
    global _warned_slow
    if not _warned_slow:
        _warned_slow = True
        warnings.warn(f"DSA runs on its PyTorch path, slower than dense attention: the CPU kernel is unavailable "
                      f"({reason})", RuntimeWarning, stacklevel=3)


def _check_contract(module, attention_mask, Lq: int, Lk: int, kwargs: dict) -> None:
    """Refuse what DSA does not implement instead of silently attending differently: padding masks (a
    sparse selection would pick pad keys) and sliding-window layers once the context is longer than the window."""
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    if window is not None and Lk > window:
        raise ValueError(f"DSA does not implement sliding-window attention: layer {module.dsa_layer} has a "
                         f"{window}-token window and the context is {Lk} tokens")
    if attention_mask is None:
        return
    allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0  # [B, 1|H, Lq, Lk]
    causal = select_all_dense(Lk, torch.arange(Lk - Lq, Lk, device=allowed.device))  # [Lq, Lk]
    if allowed.shape[-2:] != causal.shape or not bool((allowed == causal).all()):
        raise ValueError("DSA supports causal attention only: padding or custom attention masks are not "
                         "honoured (run rows of equal length, or one row at a time)")


@contextmanager
def _phase(state: DSAState, name: str):
    if state.timings is None:
        yield
        return
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)  # GPU work is asynchronous
    sync()
    t = time.perf_counter()
    yield
    sync()
    state.timings[name] = state.timings.get(name, 0.0) + time.perf_counter() - t


MASK_ELEMENTS = 1 << 24  # most [queries, keys] mask entries one SDPA call builds (SDPA makes a float copy: 64 MB)
# CPU flash attention that also returns each query's log-sum-exp (what SDPA calls on the CPU; None if torch lacks it)
_FLASH_LSE = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    """q [B, H, Lq, D], k/v [B, Hkv, Lk, D] -> [B, Lq, H, D]; queries are the last Lq positions. K/V stored in
    another dtype (a bf16 cache) are upcast to the queries'."""
    Lq, Lk = q.shape[2], k.shape[2]
    if Lq == 1 and Lk > 1 and q.shape[0] == 1:  # decode: the CPU kernel streams the rows over the threads; else two
        o = kernels.attend_all(q[0, :, 0], k[0], v[0], scaling)  # grouped matmuls (CPU SDPA is ~1.3x slower)
        return (o if o is not None else _attend_one(q[0, :, 0], k[0].to(q.dtype), v[0].to(q.dtype), scaling))[None, None]
    k, v = k.to(q.dtype), v.to(q.dtype)
    if Lq == Lk:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=True)
    elif Lq == 1:
        out = F.scaled_dot_product_attention(q, k, v, scale=scaling, enable_gqa=True)
    elif q.device.type == "cpu" and _FLASH_LSE is not None:
        return _prefix_then_causal(q, k, v, scaling).transpose(1, 2)
    else:
        # a prefill chunk after a cached prefix: SDPA's causal flag aligns top-left, so the mask is explicit, built
        # for a few queries at a time (one [Lq, Lk] mask of a 8k-query chunk at 256k keys would be 2 GB, 8 GB as
        # float), each reading only the keys up to its last query
        step = max(1, MASK_ELEMENTS // Lk)
        out = q.new_empty(q.shape)
        for s in range(0, Lq, step):
            e = min(s + step, Lq)
            end = Lk - Lq + e  # keys [0, end) are causal for some query of [s, e)
            mask = select_all_dense(end, torch.arange(Lk - Lq + s, end, device=q.device))[None, None]
            out[:, :, s:e] = F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, :end], v[:, :, :end], attn_mask=mask,
                                                             scale=scaling, enable_gqa=True)
    return out.transpose(1, 2)


def _prefix_then_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    """q [B, H, Lq, D] at the last Lq of Lk positions, k/v [B, Hkv, Lk, D] -> [B, H, Lq, D], on the CPU: every query
    sees all of the cached prefix [0, Lk - Lq) (no mask) and its own chunk causally (Lq x Lq, SDPA's causal flag),
    two flash calls whose softmaxes are merged by their log-sum-exps. No mask is built, and flash attention runs
    ~1.4x faster here than with one (8,192 queries over 64k keys: 20 vs 28 s on 2 cores)."""
    P = k.shape[2] - q.shape[2]
    o1, lse1 = _FLASH_LSE(q, k[:, :, :P], v[:, :, :P], 0.0, False, scale=scaling)  # [B, H, Lq, D], [B, H, Lq]
    o2, lse2 = _FLASH_LSE(q, k[:, :, P:], v[:, :, P:], 0.0, True, scale=scaling)
    m = torch.maximum(lse1, lse2)
    w1, w2 = torch.exp(lse1 - m)[..., None], torch.exp(lse2 - m)[..., None]
    return (o1 * w1 + o2 * w2) / (w1 + w2)


def _block_means(keys: torch.Tensor, bs: int) -> torch.Tensor:
    """keys [B, L, d] -> [B, nb, d] mean of each block (used when there is no DSACache)."""
    B, L, d = keys.shape
    pad = (-L) % bs
    sums = F.pad(keys.float(), (0, 0, 0, pad)).view(B, -1, bs, d).sum(2)
    counts = torch.full((sums.shape[1],), float(bs), device=keys.device)
    counts[-1] = L - (sums.shape[1] - 1) * bs
    return sums / counts[None, :, None]


def dsa_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """transformers attention interface: query [B, H, Lq, D], key/value [B, Hkv, Lk, D] -> ([B, Lq, H, D], None)."""
    state: DSAState = module.dsa_state
    cfg, layer = state.config, module.dsa_layer
    x, cache = state.inputs.pop(layer)
    B, H, Lq, D = query.shape
    Lk = key.shape[2]
    scaling = scaling if scaling is not None else D**-0.5
    if state.fixed is not None:  # one decode step with fixed shapes over whole buffers (GraphDecoder.fits: contract)
        return graph_decode.attend(module, state.fixed, cfg, layer, x, query, key, value, scaling), None
    _check_contract(module, attention_mask, Lq, Lk, kwargs)
    if state.capture is not None:
        state.capture(layer, x, query, key)
    if not cfg.is_sparse_layer(layer):  # its time is also reported apart: it grows with the square of the length
        with _phase(state, "attention"), _phase(state, "attention_dense_layers"):
            return dense_attention(query, key, value, scaling), None
    reference = state.reference or os.environ.get("DSA_REFERENCE") == "1"

    qpos = torch.arange(Lk - Lq, Lk, device=query.device)
    with _phase(state, "indexer"):
        key_ = (Lk - Lq, Lk, query.device, torch.is_inference_mode_enabled())  # same for every layer of a forward
        if state.rope is None or state.rope[0] != key_:
            state.rope = (key_, rope_cos_sin(qpos, cfg.rope_dim, cfg.rope_theta))
        with torch.no_grad():  # selection only needs values: the indexer learns from its own loss (dsa.train,
            qi, wi, ki = module.indexer(x, qpos, state.rope[1])  # dsa.longtrain), never through attention
        # qi [B, Lq, H_I, d_I], wi [B, Lq, H_I], ki [B, Lq, d_I]
        if isinstance(cache, DSACache):
            store = cache.index_keys[layer]
            keys = store.append(ki)
            if keys.shape[1] != Lk:
                raise RuntimeError(f"DSA layer {layer}: indexer cache holds {keys.shape[1]} keys, KV cache {Lk}")
            means = store.block_means()
        elif Lq == Lk:
            keys, means = ki, _block_means(ki, cfg.block_size)
        else:
            raise RuntimeError("incremental decoding with DSA needs a dsa.DSACache as the model's cache")

    n_blocks_total = -(-Lk // cfg.block_size)
    keeps_all = Lk <= cfg.top_k and n_blocks_total <= cfg.n_blocks  # every causal key would be selected
    use_dense = cfg.mode == "dense" or keeps_all
    rec = state.recorder
    out = None
    if use_dense:
        with _phase(state, "attention"):
            out = dense_attention(query, key, value, scaling)
        _count_path(state, "dense", B * Lq)
        if rec is None or not rec.wants(Lk - Lq, Lk - 1):
            return out, None
    else:
        out = query.new_empty(B, Lq, H, D)

    C = cfg.query_chunk
    whole = not (use_dense or reference) and rec is None  # every query of every row on one optimised path
    kernel_ok = not query.requires_grad and kernels.usable(query, keys) and key.dtype in kernels.KV_DTYPES
    batch_rows = os.environ.get("DSA_FLEX_BATCH", "1") != "0"  # 0: one flex call per row (the older path)
    if whole and B > 1 and batch_rows and not kernel_ok and flex.usable(query, cfg):  # training: rows in one call
        _flex_rows(state, query, key, value, qi, wi, keys, means, qpos, out, slice(0, B), Lq, scaling)
        return out, None
    for b in range(B):
        # CPU kernel or GPU prefill: every query before the first recorded one, in one call (recorded ones take
        # the reference path below, which also computes what they record)
        done = 0 if use_dense or reference else Lq if rec is None else min(max(rec.record_from - (Lk - Lq), 0), Lq)
        if done and kernel_ok:
            _kernel(state, layer, b, query, qi, wi, keys, means, qpos, cache, key, value, out, done, scaling)
            _count_path(state, "kernel", done)  # (the kernel has no backward: training takes flex or torch)
        elif done and flex.usable(query, cfg):
            _flex_rows(state, query, key, value, qi, wi, keys, means, qpos, out, slice(b, b + 1), done, scaling)
        else:
            if done and query.device.type == "cpu" and not query.requires_grad:
                _warn_slow_path(kernels.build_error() or "DSA_KERNELS=0")
            done = 0
        if done == Lq:
            continue
        recording = rec is not None and rec.wants(Lk - 1)
        if Lq == 1 and not reference and not use_dense and (not recording or rec.weighting == "picks"):
            if _decode_one(state, layer, b, query, qi, wi, keys, means, cache, key, value, out, scaling, recording):
                _count_path(state, "torch", 1)
                continue
        for c0 in range(done, Lq, C):
            c1 = min(c0 + C, Lq)
            qp = qpos[c0:c1]
            record = rec is not None and rec.wants(int(qp[0]), int(qp[-1]))
            if use_dense and not record:
                continue
            with _phase(state, "selection"):
                sel = select_chunk(qi[b, c0:c1], wi[b, c0:c1], keys[b], means[b], qp, cfg)
            by_attention = record and rec.weighting == "attention" and not use_dense
            if record and not by_attention:
                if rec.weighting == "picks":
                    rec.add(layer, b, qp, sel.sel_idx, sel.sel_score, sel.blocks)
                else:
                    rec.add(layer, b, qp, *chosen_record(sel, qp, cfg))
            if use_dense:
                continue
            with _phase(state, "attention"):
                read = sel.mask.any(0)  # only keys some query of the chunk selected
                tokens, mask = sel.tokens[read], sel.mask[:, read]  # [T], [C, T]
                kg, vg = _gather(cache, layer, b, tokens, key, value, query.dtype)
                o, probs = _attend_chunk(query[b, :, c0:c1], kg, vg, mask, scaling, by_attention)
                _count_keys(state, tokens.shape[0])
                out[b, c0:c1] = o
            _count_path(state, "torch", c1 - c0)
            if by_attention:
                keep = mask & (tokens >= cfg.sink_tokens)[None, :]  # [C, T]: attended, apart from the sink
                idx = torch.where(keep, tokens[None, :], torch.full_like(mask, -1, dtype=torch.long))
                score = sel.scores[:, read].masked_fill(~keep, float("-inf"))
                rec.add(layer, b, qp, idx, score, sel.blocks, probs.masked_fill(~keep, 0.0))
    return out, None


def _attend_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scaling: float,
                  probs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q [H, C, D] over gathered k/v [Hkv, T, D], query c reading mask[c] [C, T] -> ([C, H, D], probabilities
    [C, T] averaged over the query heads when `probs`, else None). SDPA unless the probabilities are wanted."""
    if not probs:
        o = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask[None, None], scale=scaling,
                                           enable_gqa=True)
        return o[0].transpose(0, 1), None
    G = q.shape[0] // k.shape[0]
    kk, vv = k.repeat_interleave(G, 0), v.repeat_interleave(G, 0)  # [H, T, D]
    s = torch.matmul(q, kk.transpose(1, 2)).float() * scaling  # [H, C, T]
    p = torch.softmax(s.masked_fill(~mask[None], float("-inf")), dim=-1)
    return torch.matmul(p.to(vv.dtype), vv).transpose(0, 1), p.mean(0)


def _flex_rows(state: DSAState, query, key, value, qi, wi, keys, means, qpos, out, rows: slice, n: int,
               scaling: float) -> None:
    """The first n queries of batch rows `rows` through `flex.prefill` (both stages + FlexAttention), one call."""
    k, v = key[rows].to(query.dtype), value[rows].to(query.dtype)  # a bf16 cache under fp32 queries: upcast
    counts = flex.prefill(query[rows, :, :n], k, v, qi[rows, :n], wi[rows, :n], keys[rows], means[rows], qpos[:n],
                          state.config, scaling, out[rows, :n], phase=lambda p: _phase(state, p),
                          tile=flex.TRAIN_TILE if query.requires_grad else flex.TILE)
    for name, c in counts.items():
        _count_keys(state, c, name)
    _count_path(state, "flex", n * (rows.stop - rows.start))


def _count_path(state: DSAState, name: str, n: int) -> None:
    state.paths[name] = state.paths.get(name, 0) + int(n)


def _gather(cache, layer: int, b: int, tokens: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            dtype: torch.dtype):
    """Keys and values [Hkv, T, D] at positions `tokens` of batch row b, in `dtype` (the queries')."""
    if isinstance(cache, DSACache):
        k, v = cache.layers[layer].gather(b, tokens)
    else:
        k, v = key[b][:, tokens], value[b][:, tokens]
    return k.to(dtype), v.to(dtype)


def _count_keys(state: DSAState, n: int | torch.Tensor, name: str = "keys_read") -> None:
    """Keys read (for the benchmark's bytes-per-token), or tiles visited by the GPU path, when profiling."""
    if state.timings is not None:
        state.timings[name] = state.timings.get(name, 0) + int(n)


def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    """One query over its gathered keys, GQA by grouping heads: q [H, D], k/v [Hkv, T, D] -> [H, D].
    Three batched matmul-sized ops; SDPA's general path costs more than the arithmetic at T ~ 1k."""
    H, D = q.shape
    Hkv = k.shape[0]
    s = torch.bmm(q.view(Hkv, H // Hkv, D) * scaling, k.transpose(1, 2))  # [Hkv, G, T]
    p = torch.softmax(s.float(), dim=-1).to(v.dtype)
    return torch.bmm(p, v).view(H, D)


def _decode_one(state: DSAState, layer: int, b: int, query, qi, wi, keys, means, cache, key, value, out,
                scaling: float, record: bool) -> bool:
    """Decode fast path for batch row b (`select_last`), recording the top-k picks when asked; False when it
    does not apply (short context)."""
    with _phase(state, "selection"):
        sel = select_last(qi[b, 0], wi[b, 0], keys[b], means[b], state.config, record)
    if sel is None:
        return False
    if record:
        qpos = torch.tensor([keys.shape[1] - 1], device=keys.device)
        state.recorder.add(layer, b, qpos, sel.picks, sel.pick_scores, sel.blocks)
    with _phase(state, "attention"):
        kg, vg = _gather(cache, layer, b, sel.tokens, key, value, query.dtype)
        out[b, 0] = _attend_one(query[b, :, 0], kg, vg, scaling)
        _count_keys(state, sel.tokens.shape[0])
    return True


def _kernel(state: DSAState, layer: int, b: int, query, qi, wi, keys, means, qpos, cache, key, value, out,
            n: int, scaling: float) -> None:
    """The first n queries of batch row b through `kernels.select_attend` (both stages + attention)."""
    t = time.perf_counter()
    if isinstance(cache, DSACache):
        kl = cache.layers[layer]
        kbuf, vbuf = kl._k.buf[b], kl._v.buf[b]  # [Hkv, cap, D], contiguous
    else:
        kbuf, vbuf = key[b].contiguous(), value[b].contiguous()
    q = query[b, :, :n].transpose(0, 1)  # [n, H, D]
    nread, (sel_s, att_s) = kernels.select_attend(qi[b, :n], wi[b, :n], keys[b], means[b], qpos[:n], q, kbuf, vbuf,
                                                  state.config, scaling, out[b, :n], stats=state.paths)
    if state.timings is not None:  # split the wall time by the kernel's own per-phase clock
        wall = time.perf_counter() - t
        frac = sel_s / max(sel_s + att_s, 1e-12)
        for name, sec in (("selection", wall * frac), ("attention", wall * (1 - frac))):
            state.timings[name] = state.timings.get(name, 0.0) + sec
    _count_keys(state, nread.sum())
