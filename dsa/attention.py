"""The attention function DSA registers with transformers (`attn_implementation="dsa"`).

The model's own attention module still computes q, k, v, RoPE and the KV-cache update; this function
receives them and decides what each query reads. Per sparse layer it runs the lightning indexer on the
layer's normalised input (stashed by a forward pre-hook), selects per chunk of `query_chunk` queries
(decode is a chunk of one), gathers only the selected keys/values and attends to them. No L x L score
matrix is ever built on the sparse path.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .cache import DSACache
from .config import DSAConfig
from .record import SelectionRecorder
from .select import attended_record, select_all_dense, select_chunk


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


@contextmanager
def _phase(state: DSAState, name: str):
    if state.timings is None:
        yield
        return
    t = time.perf_counter()
    yield
    state.timings[name] = state.timings.get(name, 0.0) + time.perf_counter() - t


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    """q [B, H, Lq, D], k/v [B, Hkv, Lk, D] -> [B, Lq, H, D]; queries are the last Lq positions."""
    Lq, Lk = q.shape[2], k.shape[2]
    if Lq == Lk:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=True)
    elif Lq == 1:
        out = F.scaled_dot_product_attention(q, k, v, scale=scaling, enable_gqa=True)
    else:
        qpos = torch.arange(Lk - Lq, Lk, device=q.device)
        mask = select_all_dense(Lk, qpos)[None, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2)


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
    if state.capture is not None:
        state.capture(layer, x, query, key)
    if not cfg.is_sparse_layer(layer):
        with _phase(state, "attention"):
            return dense_attention(query, key, value, scaling), None

    qpos = torch.arange(Lk - Lq, Lk, device=query.device)
    with _phase(state, "indexer"):
        qi, wi, ki = module.indexer(x, qpos)  # [B, Lq, H_I, d_I], [B, Lq, H_I], [B, Lq, d_I]
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
        if rec is None or not rec.wants(Lk - 1):
            return out, None
    else:
        out = query.new_empty(B, Lq, H, D)

    C = cfg.query_chunk
    for b in range(B):
        for c0 in range(0, Lq, C):
            c1 = min(c0 + C, Lq)
            qp = qpos[c0:c1]
            record = rec is not None and rec.wants(int(qp[-1]))
            if use_dense and not record:
                continue
            with _phase(state, "selection"):
                sel = select_chunk(qi[b, c0:c1], wi[b, c0:c1], keys[b], means[b], qp, cfg)
            if record:
                rec.add(layer, b, qp, *attended_record(sel, cfg.sink_tokens), sel.blocks)
            if use_dense:
                continue
            with _phase(state, "attention"):
                read = sel.mask.any(0)  # only keys some query of the chunk selected (decode: exactly its own)
                tokens, mask = sel.tokens[read], sel.mask[:, read]  # [T], [C, T]
                if isinstance(cache, DSACache):
                    kg, vg = cache.layers[layer].gather(b, tokens)  # [Hkv, T, D]
                else:
                    kg, vg = key[b][:, tokens], value[b][:, tokens]
                full = c1 - c0 == 1  # a single query reads exactly its own selection: no mask needed
                o = F.scaled_dot_product_attention(query[b : b + 1, :, c0:c1], kg[None], vg[None],
                                                   attn_mask=None if full else mask[None, None], scale=scaling,
                                                   enable_gqa=True)
                if state.timings is not None:
                    state.timings["keys_read"] = state.timings.get("keys_read", 0) + int(tokens.shape[0])
                out[b, c0:c1] = o[0].transpose(0, 1)
    return out, None
