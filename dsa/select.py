"""Two-stage selection for one chunk of queries: excerpts (64-token blocks) first, then tokens.

Stage 1 scores every causal block with the block-mean indexer key and keeps the top `n_blocks` per query,
plus the sink block(s) and the blocks of the local window. Stage 2 scores only the tokens inside the union
of kept blocks and keeps each query's top `top_k` among its own candidates. The sink tokens, the local
window and the query itself are always attended. Causality is masked before each top-k and re-applied
after it (top-k returns masked entries when fewer than k are valid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import DSAConfig

NEG = float("-inf")


@dataclass
class ChunkSelection:
    tokens: torch.Tensor  # [T] long, sorted absolute key positions gathered for this chunk
    mask: torch.Tensor  # [C, T] bool, True where query c attends tokens[t]
    sel_idx: torch.Tensor  # [C, K] long, absolute positions chosen by score (-1 = none), for provenance
    sel_score: torch.Tensor  # [C, K] fp32 indexer scores of sel_idx (-inf where none)
    blocks: torch.Tensor  # [C, n_blocks] long, the excerpts kept by stage 1 (-1 = none)
    scores: torch.Tensor  # [C, T] fp32 indexer scores of `tokens`


def _scores(q: torch.Tensor, w: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q [C, H, d], w [C, H], k [N, d] -> [C, N] = sum_h w * relu(q_h . k)."""
    logits = torch.einsum("chd,nd->chn", q.float(), k.float())
    return torch.einsum("chn,ch->cn", F.relu(logits), w)


def _tiebreak(scores: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Order exact ties by recency, so a selection never depends on how the queries were chunked:
    prefill-then-decode and recompute-from-scratch pick the same keys. The ties that occur are exact
    zeros (every head's ReLU is off); they become pos * 1e-30, still below any real positive score and
    above any negative one, and distinct (float32 keeps 1e-30 * pos exactly ordered)."""
    return torch.where(scores == 0, pos.float()[None, :] * 1e-30, scores)


def select_chunk(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, block_means: torch.Tensor,
                 qpos: torch.Tensor, cfg: DSAConfig) -> ChunkSelection:
    """q [C, H, d], w [C, H], keys [L, d], block_means [nb, d], qpos [C] absolute query positions."""
    L, bs = keys.shape[0], cfg.block_size
    nb = block_means.shape[0]
    dev = keys.device
    bstart = torch.arange(nb, device=dev) * bs  # [nb]
    bend = torch.clamp(bstart + bs, max=L) - 1  # last position inside each block
    qp = qpos[:, None]  # [C, 1]

    # stage 1: excerpts
    causal_b = bstart[None, :] <= qp  # [C, nb]
    local_lo = torch.clamp(qp - cfg.local_window + 1, min=0)
    forced_b = (bstart[None, :] < cfg.sink_tokens) | ((bend[None, :] >= local_lo) & causal_b)
    forced_b &= causal_b
    bscore = _tiebreak(_scores(q, w, block_means), bstart).masked_fill(~causal_b | forced_b, NEG)  # [C, nb]
    kb = min(cfg.n_blocks, nb)
    bval, bidx = bscore.topk(kb, dim=-1)  # [C, kb]
    bok = bval > NEG  # re-apply the mask: top-k returns masked blocks when few are valid
    cand_b = forced_b.clone()
    cand_b.scatter_(1, bidx, bok | cand_b.gather(1, bidx))
    blocks = torch.where(bok, bidx, torch.full_like(bidx, -1))

    # stage 2: tokens inside the union of kept blocks
    ublocks = cand_b.any(0).nonzero().squeeze(1)  # [U]
    tokens = (ublocks[:, None] * bs + torch.arange(bs, device=dev)[None, :]).flatten()
    tokens = tokens[tokens < L]  # [T]
    tscore = _scores(q, w, keys[tokens])  # [C, T]
    causal_t = tokens[None, :] <= qp
    cand_t = cand_b[:, tokens // bs] & causal_t
    forced_t = ((tokens[None, :] < cfg.sink_tokens) | (qp - tokens[None, :] < cfg.local_window)
                | (tokens[None, :] == qp)) & causal_t
    comp = _tiebreak(tscore, tokens).masked_fill(~cand_t | forced_t, NEG)
    kt = min(cfg.top_k, tokens.shape[0])
    tval, tidx = comp.topk(kt, dim=-1)  # [C, kt]
    tok_ok = tval > NEG
    mask = forced_t.clone()
    mask.scatter_(1, tidx, tok_ok | mask.gather(1, tidx))
    sel_idx = torch.where(tok_ok, tokens[tidx], torch.full_like(tidx, -1))
    return ChunkSelection(tokens, mask, sel_idx, tval.float(), blocks, tscore)


def attended_record(sel: ChunkSelection, sink_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What each query attends apart from the sink: top-k picks *and* the forced local window (so the
    last tokens before a question can be cited too), with their indexer scores, best first.
    -> idx [C, K] (-1 = none), score [C, K] (-inf = none)."""
    keep = sel.mask & (sel.tokens >= sink_tokens)[None, :]  # [C, T]
    k = max(int(keep.sum(-1).max()), 1)
    val, ix = sel.scores.masked_fill(~keep, NEG).topk(min(k, keep.shape[1]), dim=-1)
    idx = torch.where(val > NEG, sel.tokens[ix], torch.full_like(ix, -1))
    return idx, val


def select_all_dense(L: int, qpos: torch.Tensor) -> torch.Tensor:
    """Causal mask [C, L] for the dense path (keeps everything causal)."""
    return torch.arange(L, device=qpos.device)[None, :] <= qpos[:, None]
