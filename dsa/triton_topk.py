"""Row-wise top-k *indices* on a GPU in one Triton kernel, for both selection stages of `dsa.flex`.

Why: `torch.topk` over [8,192 queries, 4,352 candidates] sorts every row's winners; at 128k tokens the two
top-k calls were most of the 57 ms a layer spent selecting (H200). Attention needs only the *set* of the k
best, in any order, so one program per row finds the k-th largest score by radix select (32 counting passes
over the row, held in registers) and writes the winners' column indices in ascending column order.

Selection spec (as `torch.topk` on the same row, which `dsa.select` is the reference for): the k largest
finite scores; -inf entries are never chosen, so a row with fewer than k finite scores yields them all and
-1 for the rest. Exact ties at the k-th score (real scores tie only by accident: `select._tiebreak` already
makes the zeros distinct) are broken towards the lower column, where `torch.topk` leaves the order unspecified.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: torch's CPU wheel does not bring Triton
    triton = None

MAX_COLS = 16384  # one row lives in one program's registers (4352 candidates at 64 blocks; 4096 blocks at 256k)


def interpreting() -> bool:
    """Triton's CPU interpreter (TRITON_INTERPRET=1): the kernels run on CPU tensors, for tests without a GPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(t: torch.Tensor) -> bool:
    return triton is not None and (t.is_cuda or interpreting()) and os.environ.get("DSA_TRITON", "1") != "0"


if triton is not None:

    @triton.jit
    def _topk_kernel(s_ptr, out_ptr, N, K, NA: tl.constexpr, NB: tl.constexpr):
        # a row of N = NA + (at most NB) columns as two power-of-two blocks: 4,352 candidates are 4,096 + 256
        # (padding them to 8,192 doubled every pass)
        r = tl.program_id(0).to(tl.int64)
        ca = tl.arange(0, NA)
        cb = NA + tl.arange(0, NB)
        ua, va = _keys(tl.load(s_ptr + r * N + ca, mask=ca < N, other=float("-inf")))
        ub, vb = _keys(tl.load(s_ptr + r * N + cb, mask=cb < N, other=float("-inf")))
        n_valid = tl.sum(va.to(tl.int32), axis=0) + tl.sum(vb.to(tl.int32), axis=0)
        # radix select: the largest t with count(u >= t) >= K, built one bit at a time from the top
        t = tl.zeros([], dtype=tl.uint32)
        for bit in tl.static_range(31, -1, -1):
            cand = t | tl.full([], 1 << bit, tl.uint32)
            c = tl.sum((ua >= cand).to(tl.int32), axis=0) + tl.sum((ub >= cand).to(tl.int32), axis=0)
            t = tl.where(c >= K, cand, t)
        # ties at the threshold: the lowest columns among them, as many as the k places left
        need = K - tl.sum((ua > t).to(tl.int32), axis=0) - tl.sum((ub > t).to(tl.int32), axis=0)
        ea = ((ua == t) & va).to(tl.int32)
        eb = ((ub == t) & vb).to(tl.int32)
        ta = (ua > t) | ((ea != 0) & (tl.cumsum(ea, axis=0) <= need))
        tb = (ub > t) | ((eb != 0) & (tl.cumsum(eb, axis=0) + tl.sum(ea, axis=0) <= need))
        ta = tl.where(n_valid <= K, va, ta)
        tb = tl.where(n_valid <= K, vb, tb)
        pa = tl.cumsum(ta.to(tl.int32), axis=0) - 1
        pb = tl.cumsum(tb.to(tl.int32), axis=0) - 1 + tl.sum(ta.to(tl.int32), axis=0)
        tl.store(out_ptr + r * K + pa, ca.to(tl.int32), mask=ta)
        tl.store(out_ptr + r * K + pb, cb.to(tl.int32), mask=tb)

    @triton.jit
    def _keys(x):
        """fp32 scores -> (uint32 keys in the same order, finite?): negatives flip every bit, positives set the sign
        bit; -inf (not a candidate) maps to 0, below every finite score's key (> 0x007FFFFF)."""
        valid = x > float("-inf")
        b = x.to(tl.int32, bitcast=True)
        u = (b ^ ((b >> 31) | -2147483648)).to(tl.uint32, bitcast=True)
        return tl.where(valid, u, 0), valid


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """scores [..., N] fp32 (-inf = not a candidate) -> int64 [..., min(k, N)]: the columns of each row's k largest
    finite scores, ascending, -1 past the row's finite count. See the module docstring for the tie rule."""
    *lead, N = scores.shape
    if N > MAX_COLS:
        raise ValueError(f"topk_indices holds a row in registers: {N} columns > {MAX_COLS}")
    k = min(k, N)
    s = scores.float().contiguous().view(-1, N)
    out = torch.full((s.shape[0], k), -1, dtype=torch.int32, device=s.device)
    if s.shape[0] and k:
        NA = triton.next_power_of_2(N) if N & (N - 1) == 0 else triton.next_power_of_2(N) // 2
        NB = max(16, triton.next_power_of_2(N - NA))
        _topk_kernel[(s.shape[0],)](s, out, N, k, NA=NA, NB=NB, num_warps=8 if NA >= 4096 else 4)
    return out.view(*lead, k).long()
