"""Sparse attention that gathers each query's own keys, in one Triton kernel (GPU prefill and decode).

Why: FlexAttention needs the selection as a mask. Per chunk of 8,192 queries that was a dense [C, Lk] bool
mask (1 GB at 128k keys) plus a tile list, and the kernel then visited every 64 x 64 tile some query of the
tile needed, evaluating `mask_mod` on each element. Here a query reads only its ~1.2k keys, listed in
`idx` (sink, top-k picks, local window), with an online softmax over 64-key gathers. The query heads
sharing one KV head (GQA) form the rows of the matrix products, padded to the 16 the tensor cores need.

Forward only: training keeps FlexAttention, whose backward exists (`dsa.flex`); a backward here would scatter
dK/dV with atomics over every query's picks.
"""

from __future__ import annotations

import torch

from .triton_topk import available, triton  # noqa: F401  (one availability rule for the Triton kernels)

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _attend_kernel(q_ptr, k_ptr, v_ptr, idx_ptr, o_ptr, scale, Lq,
                       sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob, sol, soh,
                       NI: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BN: tl.constexpr):
        i = tl.program_id(0)  # query
        hk = tl.program_id(1)  # KV head
        b = tl.program_id(2).to(tl.int64)  # batch row
        g = tl.arange(0, GP)
        d = tl.arange(0, D)
        gm = g < G
        q = tl.load(q_ptr + b * sqb + (hk * G + g)[:, None] * sqh + i * sql + d[None, :], mask=gm[:, None], other=0.0)
        k_ptr += b * skb + hk * skh
        v_ptr += b * svb + hk * svh
        idx_ptr += (b * Lq + i) * NI
        m = tl.full([GP], float("-inf"), tl.float32)
        l = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        for n0 in range(0, NI, BN):
            n = n0 + tl.arange(0, BN)
            t = tl.load(idx_ptr + n, mask=n < NI, other=-1)  # [BN] key positions, -1 = none
            ok = t >= 0
            kk = tl.load(k_ptr + t[:, None].to(tl.int64) * skl + d[None, :], mask=ok[:, None], other=0.0)  # [BN, D]
            s = tl.dot(q, tl.trans(kk)) * scale  # [GP, BN] fp32
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: p and alpha become 0, never NaN
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m - m_new)
            vv = tl.load(v_ptr + t[:, None].to(tl.int64) * svl + d[None, :], mask=ok[:, None], other=0.0)  # [BN, D]
            acc = acc * alpha[:, None] + tl.dot(p.to(vv.dtype), vv)
            l = l * alpha + tl.sum(p, axis=1)
            m = m_new
        o = acc / l[:, None]
        tl.store(o_ptr + b * sob + i * sol + (hk * G + g)[:, None] * soh + d[None, :], o.to(o_ptr.dtype.element_ty),
                 mask=gm[:, None])


def key_lists(picks: torch.Tensor, qpos: torch.Tensor, sink: int, local: int) -> torch.Tensor:
    """Every key each query attends, as one list: picks [B, C, K] (-1 = none; never a forced token), qpos [C] ->
    int32 [B, C, sink + K + max(local, 1)]: the sink tokens, the picks, the local window (with the query itself),
    -1 where not causal or already listed."""
    B, C, _ = picks.shape
    dev = picks.device
    qp = qpos[:, None]  # [C, 1]
    s = torch.arange(sink, device=dev)[None, :]
    s = torch.where(s <= qp, s, -1).expand(C, sink)
    loc = qp - torch.arange(max(local, 1), device=dev)[None, :]  # [C, W]: the query and the W - 1 before it
    loc = torch.where(loc >= sink, loc, -1)  # below `sink`: a sink token (listed) or before 0
    forced_s, forced_l = s.expand(B, C, sink), loc.expand(B, C, loc.shape[1])
    return torch.cat([forced_s, picks, forced_l], -1).to(torch.int32).contiguous()


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, idx: torch.Tensor, scaling: float,
           out: torch.Tensor) -> None:
    """query [B, H, C, D], key/value [B, Hkv, Lk, D] (any strides along B/H/L, unit stride along D), idx [B, C, NI]
    int32 (`key_lists`) -> writes out [B, C, H, D]."""
    B, H, C, D = query.shape
    Hkv = key.shape[1]
    G = H // Hkv
    if idx.shape[-1] == 0 or C == 0:
        return
    assert query.stride(-1) == key.stride(-1) == value.stride(-1) == out.stride(-1) == 1
    key, value = key.to(query.dtype), value.to(query.dtype)
    _attend_kernel[(C, Hkv, B)](query, key, value, idx, out, scaling, C,
                                *query.stride()[:3], *key.stride()[:3], *value.stride()[:3], *out.stride()[:3],
                                NI=idx.shape[-1], G=G, GP=max(16, triton.next_power_of_2(G)), D=D, BN=64, num_warps=4)
