"""Both selection stages' scores on a GPU, one Triton kernel each (used by `dsa.flex` when Triton is present).

Stage 1 (`stage1_scores`): a program scores a tile of 64 queries against 64 block-mean keys with tensor-core
products per indexer head, applies ReLU, the head weights, the recency tie-break and the causal/forced masks, and
writes only the [C, nb] result; in PyTorch ops the [C, H, nb] logits went through memory several times (16 ms a
layer at 128k tokens on an H200, where this kernel is meant to take a few).

Why: in PyTorch ops, stage 2 materialises every query's candidate keys ([C, slots x 64, d] fp32, 4.5 GB
for 8,192 queries) and walks [C, slots x 64] tensors a dozen times; that was 10 ms of a 128k-token chunk's
selection on an H200. Here one program scores one query's 64 tokens of one candidate block, reading the
block's keys straight from the indexer key cache (neighbouring queries share blocks, so mostly from L2).
Scores, masking and the recency tie-break are those of `flex._stage2_torch`.
"""

from __future__ import annotations

import os

import torch

from .triton_topk import interpreting

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: torch's CPU wheel does not bring Triton
    triton = None


def available(keys: torch.Tensor) -> bool:
    d = keys.shape[-1]
    return (triton is not None and (keys.is_cuda or interpreting()) and d >= 16 and d & (d - 1) == 0
            and os.environ.get("DSA_TRITON", "1") != "0")


if triton is not None:

    @triton.jit
    def _scores_kernel(q_ptr, w_ptr, k_ptr, slot_ptr, qpos_ptr, out_ptr, L, S, C, sink, local,
                       H: tl.constexpr, D: tl.constexpr, BS: tl.constexpr):
        c = tl.program_id(0)  # query c % C of batch row c // C (rows share positions, not keys)
        s = tl.program_id(1)
        blk = tl.load(slot_ptr + c * S + s)
        qp = tl.load(qpos_ptr + c % C)
        k_ptr += (c // C).to(tl.int64) * L * D
        t = blk * BS + tl.arange(0, BS)  # [BS] token positions
        valid = (blk >= 0) & (t <= qp) & (t < L)
        dd = tl.arange(0, D)
        k = tl.load(k_ptr + t[:, None] * D + dd[None, :], mask=valid[:, None], other=0.0).to(tl.float32)  # [BS, D]
        acc = tl.zeros([BS], dtype=tl.float32)
        for h in tl.static_range(H):
            qh = tl.load(q_ptr + (c * H + h) * D + dd).to(tl.float32)  # [D]
            logit = tl.sum(k * qh[None, :], axis=1)  # [BS]
            acc += tl.load(w_ptr + c * H + h) * tl.maximum(logit, 0.0)
        acc = tl.where(acc == 0.0, t.to(tl.float32) * 1e-30, acc)
        forced = (t < sink) | (qp - t < local) | (t == qp)
        acc = tl.where(valid & (forced == 0), acc, float("-inf"))
        tl.store(out_ptr + c * S * BS + s * BS + tl.arange(0, BS), acc)


if triton is not None:

    @triton.jit
    def _block_kernel(q_ptr, w_ptr, m_ptr, qpos_ptr, out_ptr, C, NB, L, sink, local,
                      H: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, BQ: tl.constexpr, BB: tl.constexpr):
        r = tl.program_id(2).to(tl.int64)  # batch row
        c = tl.program_id(0) * BQ + tl.arange(0, BQ)  # [BQ] queries of this chunk
        blk = tl.program_id(1) * BB + tl.arange(0, BB)  # [BB] blocks
        cm, bm = c < C, blk < NB
        dd = tl.arange(0, D)
        means = tl.load(m_ptr + (r * NB + blk[:, None]) * D + dd[None, :], mask=bm[:, None], other=0.0).to(tl.float32)
        acc = tl.zeros([BQ, BB], tl.float32)
        for h in tl.static_range(H):
            qh = tl.load(q_ptr + ((r * C + c[:, None]) * H + h) * D + dd[None, :], mask=cm[:, None], other=0.0)
            logit = tl.dot(qh.to(tl.float32), tl.trans(means), input_precision="ieee")  # [BQ, BB], fp32 as the reference
            wh = tl.load(w_ptr + (r * C + c) * H + h, mask=cm, other=0.0)
            acc += wh[:, None] * tl.maximum(logit, 0.0)
        qp = tl.load(qpos_ptr + c, mask=cm, other=0)[:, None]  # [BQ, 1]
        bstart = (blk * BS)[None, :]  # [1, BB]
        bend = tl.minimum(bstart + BS, L) - 1
        local_lo = tl.maximum(qp - tl.maximum(local, 1) + 1, 0)
        causal = bstart <= qp
        forced = ((bstart < sink) | (bend >= local_lo)) & causal
        acc = tl.where(acc == 0.0, bstart.to(tl.float32) * 1e-30, acc)
        acc = tl.where(causal & (forced == 0), acc, float("-inf"))
        tl.store(out_ptr + (r * C + c[:, None]) * NB + blk[None, :], acc, mask=cm[:, None] & bm[None, :])


def stage1_scores(q: torch.Tensor, w: torch.Tensor, block_means: torch.Tensor, qpos: torch.Tensor, L: int,
                  block_size: int, sink: int, local: int) -> torch.Tensor:
    """`dsa.select.stage1_scores`'s scores in one kernel: q [(B,) C, H, d], w [(B,) C, H], block_means [(B,) nb, d],
    qpos [C] (shared by the rows) -> [(B,) C, nb] fp32, -inf where a block does not compete (not causal, or forced)."""
    *lead, C, H, D = q.shape
    nb = block_means.shape[-2]
    rows = q.numel() // (C * H * D)
    out = torch.empty(*lead, C, nb, device=q.device, dtype=torch.float32)
    BQ, BB = 64, 64
    _block_kernel[(triton.cdiv(C, BQ), triton.cdiv(nb, BB), rows)](
        q.contiguous(), w.float().contiguous(), block_means.float().contiguous(), qpos.contiguous(), out, C, nb, L,
        sink, local, H=H, D=D, BS=block_size, BQ=BQ, BB=BB)
    return out


def stage2_scores(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, slots: torch.Tensor, qpos: torch.Tensor,
                  block_size: int, sink: int, local: int) -> torch.Tensor:
    """q [(B,) C, H, d], w [(B,) C, H] fp32, keys [(B,) L, d], slots [(B,) C, S] (-1 = none), qpos [C] (shared by
    the rows) -> scores [(B,) C, S * block_size] fp32, -inf where a token is not a candidate (not causal, forced,
    or an empty slot)."""
    *lead, C, H, D = q.shape
    S = slots.shape[-1]
    rows = q.numel() // (C * H * D)
    out = torch.empty(*lead, C, S * block_size, device=q.device, dtype=torch.float32)
    _scores_kernel[(rows * C, S)](q.contiguous(), w.float().contiguous(), keys.contiguous(), slots.contiguous(),
                                  qpos.contiguous(), out, keys.shape[-2], S, C, sink, local, H=H, D=D, BS=block_size)
    return out
