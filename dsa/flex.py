"""GPU prefill for DSA: both selection stages over large chunks of queries, then FlexAttention.

Why: the PyTorch path walks 64 queries at a time (tens of small launches per chunk, a host sync per
chunk), which on a GPU costs more than the arithmetic. Here one chunk is thousands of queries:

- stage 1 scores every causal block with the block-mean indexer key and keeps the top `n_blocks`
  (as `select_chunk`);
- stage 2 scores, per query, only the tokens of its own candidate blocks (kept + sink + local
  blocks, a fixed number of slots) and keeps the top `top_k` non-forced ones;
- the picks go into a per-query mask [C, Lk] (one chunk at a time), and a FlexAttention block mask lists, per tile of
  64 queries, the 64-token blocks some query of the tile reads. The kernel visits only those blocks,
  and `mask_mod` keeps each query to its own tokens (picks, sink, local window, causal).

Same selections as `select_chunk` (tests compare them); no L x L tensor is built.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

from . import triton_attend, triton_select, triton_topk
from .config import DSAConfig
from .select import NEG, _tiebreak, stage1_scores

TILE = 64  # queries per FlexAttention tile and keys per KV tile (= the excerpt block size it supports)
# Training tiles: FlexAttention's backward on Hopper (head dim 64) tiles by 64 x 128, so its block mask
# needs 128 x 128 blocks; the per-query mask keeps the selection exact, only fewer empty tiles are skipped
TRAIN_TILE = 128
CHUNK = 8192  # queries selected at once: stage 2 holds [CHUNK, slots * 64, d] gathered keys
_compiled = None


def usable(query: torch.Tensor, cfg: DSAConfig) -> bool:
    """The GPU prefill path runs for CUDA queries of a prefill (more than one query) with 64-token blocks."""
    if os.environ.get("DSA_FLEX", "1") == "0" or not query.is_cuda or query.shape[2] < 2 or cfg.block_size != TILE:
        return False
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _flex():
    """flex_attention, compiled on CUDA (eager flex is a reference implementation, O(L^2) memory)."""
    global _compiled
    from torch.nn.attention.flex_attention import flex_attention
    if _compiled is None:
        _compiled = torch.compile(flex_attention, dynamic=False) if torch.cuda.is_available() else flex_attention
    return _compiled


def forced_slots(qpos: torch.Tensor, cfg: DSAConfig) -> torch.Tensor:
    """[C, ns + nl] blocks every query attends in part: the sink blocks and the blocks reaching into its local
    window (-1 where not causal, or a local block already listed as a sink block)."""
    bs = cfg.block_size
    ns = -(-cfg.sink_tokens // bs)
    local = max(cfg.local_window, 1)  # the query's own block is forced even with no local window
    nl = -(-local // bs) + 1
    qp = qpos[:, None]  # [C, 1]
    sink = torch.arange(ns, device=qpos.device)[None, :].expand(qpos.shape[0], ns)  # [C, ns]
    first = torch.clamp(qp - local + 1, min=0) // bs  # [C, 1]: blocks ending at or after local_lo
    local = first + torch.arange(nl, device=qpos.device)[None, :]  # [C, nl]
    sink = torch.where(sink * bs <= qp, sink, -1)
    local = torch.where((local * bs <= qp) & (local >= ns), local, -1)
    return torch.cat([sink, local], 1)


def select_picks(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, block_means: torch.Tensor,
                 qpos: torch.Tensor, cfg: DSAConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Both stages for a chunk: q [(B,) C, H, d], w [(B,) C, H], keys [(B,) L, d], block_means [(B,) nb, d],
    qpos [C] (the same positions in each of the B rows: training windows, one selection per row in one go).
    -> kept blocks [(B,) C, n_blocks] (-1 = none) and picked tokens [(B,) C, top_k] (-1 = none); the forced
    tokens (sink, local window, the query itself) are implied, as in `select_chunk`."""
    if keys.dim() == 2:
        blocks, picks = select_picks(q[None], w[None], keys[None], block_means[None], qpos, cfg)
        return blocks[0], picks[0]
    bs = cfg.block_size
    qf, wf = q.float(), w.float()
    if triton_select.available(keys):  # excerpts (as select_chunk)
        bscore = triton_select.stage1_scores(q, w, block_means, qpos, keys.shape[1], bs, cfg.sink_tokens,
                                             cfg.local_window)
    else:
        bscore = stage1_scores(q, w, block_means, qpos, keys.shape[1], cfg)[1]
    bidx, bok = _topk_set(bscore, cfg.n_blocks)
    blocks = torch.where(bok, bidx, -1)  # [B, C, kb]

    # stage 2: the tokens of each query's own candidate blocks, [B, C, S * bs]
    forced = forced_slots(qpos, cfg)
    slots = torch.cat([blocks, forced.expand(blocks.shape[0], *forced.shape)], -1)  # [B, C, S]
    if triton_select.available(keys):
        tscore = triton_select.stage2_scores(q, wf, keys, slots, qpos, bs, cfg.sink_tokens, cfg.local_window)
    else:
        tscore = _stage2_torch(qf, wf, keys, slots, qpos, cfg)
    tidx, ok = _topk_set(tscore, cfg.top_k)
    tidx = tidx.clamp(min=0)
    picks = slots.gather(-1, tidx // bs) * bs + tidx % bs
    return blocks, torch.where(ok, picks, -1)


def _topk_set(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [..., N] (-inf = not a candidate) -> (columns [..., min(k, N)], which of them are real): the k best as
    a set, in one Triton kernel where it runs (torch.topk also sorts them: most of the selection's time on a GPU)."""
    if triton_topk.available(scores) and scores.shape[-1] <= triton_topk.MAX_COLS:
        idx = triton_topk.topk_indices(scores, k)
        return idx, idx >= 0
    val, idx = scores.topk(min(k, scores.shape[-1]), dim=-1)
    return idx, val > NEG


def _stage2_torch(qf: torch.Tensor, wf: torch.Tensor, keys: torch.Tensor, slots: torch.Tensor, qpos: torch.Tensor,
                  cfg: DSAConfig) -> torch.Tensor:
    """qf [B, C, H, d], wf [B, C, H], keys [B, L, d], slots [B, C, S] -> scores [B, C, S * bs] of the slots'
    tokens, -inf where not a candidate (see `triton_select` for the GPU)."""
    (B, L, d), bs = keys.shape, cfg.block_size
    nb = -(-L // bs)
    qp = qpos[:, None]
    tok = (slots[..., None] * bs + torch.arange(bs, device=keys.device)).flatten(-2)  # [B, C, T]
    valid = (slots >= 0).repeat_interleave(bs, -1) & (tok <= qp) & (tok < L)
    forced = (tok < cfg.sink_tokens) | (qp - tok < cfg.local_window) | (tok == qp)
    kblocks = F.pad(keys.float(), (0, 0, 0, nb * bs - L)).view(B, nb, bs, d)
    rows = torch.arange(B, device=keys.device)[:, None, None]
    kg = kblocks[rows, slots.clamp(min=0)].flatten(2, 3)  # [B, C, T, d]: whole 64-key rows (a token gather is 10x slower)
    logits = torch.einsum("bchd,bctd->bcht", qf, kg)  # [B, C, H, T]
    tscore = torch.einsum("bch,bcht->bct", wf, F.relu(logits))  # [B, C, T]
    return _tiebreak(tscore, tok).masked_fill(~valid | forced, NEG)


def picked_mask(picks: torch.Tensor, Lk: int, rows: int, tile: int = TILE) -> torch.Tensor:
    """picks [(B,) C, K] (-1 = none) -> bool [(B,) rows >= C, Lk + tile]: True where query c picked key t. Dense per
    chunk (1 GB for 8,192 queries at 128k keys) so that `mask_mod` reads it coalesced along the keys: a
    bitset read per element cost 7x the attention itself (measured on an H200). Padded so FlexAttention's
    padded tiles never index past it; column Lk + tile - 1 absorbs the -1s (never causal)."""
    *lead, C, _ = picks.shape
    sel = torch.zeros(*lead, rows, Lk + tile, dtype=torch.bool, device=picks.device)
    sel[..., :C, :].scatter_(-1, torch.where(picks >= 0, picks, Lk + tile - 1), True)
    return sel


def tile_blocks(picks: torch.Tensor, qpos: torch.Tensor, Lk: int, cfg: DSAConfig,
                tile: int = TILE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile of `tile` queries, the `tile`-key blocks any of its queries reads: its picks' blocks, the sink
    blocks, the local-window blocks. picks [(B,) C, K] -> kv_num_blocks [B or 1, 1, nt] int32, kv_indices
    [B or 1, 1, nt, nkv] int32 (listed first). `tile` is a multiple of the excerpt block size."""
    picks = picks if picks.dim() == 3 else picks[None]
    B, C, _ = picks.shape
    nt, nkv = -(-C // tile), -(-Lk // tile)
    diag = (qpos // tile)[:, None]  # the query's own block (the query attends itself even with no local window)
    forced = forced_slots(qpos, cfg)  # excerpt blocks -> tile blocks
    forced = torch.cat([torch.where(forced >= 0, forced * cfg.block_size // tile, -1), diag], 1)  # [C, F]
    read = torch.cat([torch.where(picks >= 0, picks // tile, -1), forced.expand(B, *forced.shape)], -1)  # [B, C, R]
    pad = nt * tile - C
    read = F.pad(read, (0, 0, 0, pad), value=-1).view(B, nt, -1)  # [B, nt, tile * R]
    used = torch.zeros(B, nt, nkv + 1, dtype=torch.bool, device=picks.device)
    used.scatter_(-1, torch.where(read >= 0, read, nkv), True)  # column nkv collects the -1s
    used = used[..., :nkv]
    num = used.sum(-1, dtype=torch.int32)
    idx = torch.argsort(used.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return num[:, None], idx[:, None]


def prefill(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, qi: torch.Tensor, wi: torch.Tensor,
            keys: torch.Tensor, means: torch.Tensor, qpos: torch.Tensor, cfg: DSAConfig, scaling: float,
            out: torch.Tensor, phase=None, chunk: int = CHUNK, tile: int = TILE) -> dict[str, int]:
    """DSA for the queries of one batch row, or of B rows at the same positions in one go (training windows: one
    selection and one FlexAttention call per layer instead of B): query [(B,) H, Lq, D], key/value [(B,) Hkv, Lk, D],
    qi [(B,) Lq, H_I, d_I], wi [(B,) Lq, H_I], keys [(B,) Lk, d_I], means [(B,) nb, d_I], qpos [Lq]; writes out
    [(B,) Lq, H, D]. phase(name) is an optional context manager timing "selection" and "attention". -> counts:
    "keys_read" (tokens the queries attend), "tiles" (64 x 64 tiles the kernel visits) and "tiles_causal" (those
    dense causal attention visits), as 0-d tensors summed over the rows."""
    from torch.nn.attention.flex_attention import BlockMask

    if query.dim() == 3:  # one row
        query, key, value, qi, wi, keys, means, out = (t[None] for t in (query, key, value, qi, wi, keys, means, out))
    B, Lq, Lk = query.shape[0], query.shape[2], key.shape[2]
    sink, local = cfg.sink_tokens, cfg.local_window
    phase = phase or (lambda name: contextlib.nullcontext())
    # tensors, not ints: an int() here would stall the GPU three times per chunk and layer (twice per layer in
    # training, with checkpointing); `attention._count_keys` converts them only when profiling
    counts = {"keys_read": 0, "tiles": 0, "tiles_causal": 0}
    # FlexAttention indexes the [B, chunk, Lk + tile] pick mask with 32-bit offsets: past 2^31 elements they wrap
    # (silently wrong masks at ~262k keys with 8,192-query chunks), so long contexts take smaller chunks
    # inference: each query gathers its own keys (`triton_attend`); training needs FlexAttention's backward
    gather = not query.requires_grad and triton_attend.available(query) and os.environ.get("DSA_GATHER", "1") != "0"
    if not gather:
        chunk = max(128, min(chunk, (2**31 - 1) // (B * (Lk + tile)) // 128 * 128))
    for c0 in range(0, Lq, chunk):
        c1 = min(c0 + chunk, Lq)
        C = c1 - c0
        with phase("selection"):
            _, picks = select_picks(qi[:, c0:c1], wi[:, c0:c1], keys, means, qpos[c0:c1], cfg)  # [B, C, K]
            if gather:
                lists = triton_attend.key_lists(picks, qpos[c0:c1], sink, local)  # [B, C, NI]
        if gather:
            with phase("attention"):
                triton_attend.attend(query[:, :, c0:c1], key, value, lists, scaling, out[:, c0:c1])
            counts["keys_read"] += (lists >= 0).sum()
            continue
        q0t = qpos[c0]  # a tensor, not an int: a captured int would recompile the kernel per chunk
        with phase("selection"):
            sel = picked_mask(picks, Lk, -(-C // 128) * 128, tile)
            num, idx = tile_blocks(picks, qpos[c0:c1], Lk, cfg, tile)

        def mask_mod(b, h, q_idx, kv_idx):
            qp = q_idx + q0t
            picked = sel[b, q_idx, kv_idx]
            forced = (kv_idx < sink) | (qp - kv_idx < local) | (kv_idx == qp)
            return (kv_idx <= qp) & (picked | forced)

        with phase("attention"):
            bm = BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=(tile, tile), mask_mod=mask_mod, seq_lengths=(C, Lk))
            o = _flex()(query[:, :, c0:c1], key, value, block_mask=bm, scale=scaling, enable_gqa=True,
                        kernel_options={"BLOCK_M": TILE, "BLOCK_N": TILE} if query.is_cuda else None)
            out[:, c0:c1] = o.transpose(1, 2)
        n_forced = torch.clamp(qpos[c0:c1] + 1, max=sink + max(local, 1))  # sink, local window, itself
        counts["keys_read"] += B * n_forced.sum() + (picks >= 0).sum()
        counts["tiles"] += num.sum()
        last = qpos[c0:c1][torch.clamp(torch.arange(tile - 1, C + tile - 1, tile, device=qpos.device), max=C - 1)]
        counts["tiles_causal"] += B * (torch.div(last, tile, rounding_mode="floor") + 1).sum()  # per query tile
    return counts
