"""The selection spec, and its reference implementation (`select_chunk`), which every other path is tested
against: the CPU kernel (csrc/), the decode fast path (`select_last`), FlexAttention and Triton (flex.py,
triton_select.py) and training (train.py). `DSA_REFERENCE=1` (or `dsa.use_reference`) runs this path alone.

For a query at position p over keys 0..p, with indexer score I(p, s) = sum_h w_h * relu(q_h . k_s):
  1. Forced, never competing: the attention sink (s < sink_tokens), the local window (p - s < local_window)
     and the query itself (s = p).
  2. Stage 1, excerpts (this project's addition): 64-token blocks scored with the block-mean indexer key;
     the sink blocks and every block reaching into the local window (at least the query's own block) are
     candidates; of the other causal blocks the top `n_blocks` by score are candidates too.
  3. Stage 2, tokens (DeepSeek's token top-k): among the non-forced causal tokens of the candidate blocks,
     the top `top_k` by indexer score.
  4. Causal re-mask: top-k returns masked entries when fewer than k are valid; they are dropped.
  5. Ties at exactly 0 (every head's ReLU off) are ordered by recency (`_tiebreak`), so a selection never
     depends on how queries were chunked. Attention reads 1 + 3, in position order.
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
    """q [(B,) C, H, d], w [(B,) C, H], k [(B,) N, d] -> [(B,) C, N] = sum_h w * relu(q_h . k)."""
    logits = torch.einsum("...chd,...nd->...chn", q.float(), k.float())
    return torch.einsum("...chn,...ch->...cn", F.relu(logits), w.float())


def _tiebreak(scores: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Order exact ties by recency, so a selection never depends on how the queries were chunked:
    prefill-then-decode and recompute-from-scratch pick the same keys. The ties that occur are exact
    zeros (every head's ReLU is off); they become pos * 1e-30, still below any real positive score and
    above any negative one, and distinct (float32 keeps 1e-30 * pos exactly ordered).
    pos: [T] shared by every query, or per query with the scores' leading dims ([C, T], [B, C, T])."""
    return torch.where(scores == 0, (pos.float() if pos.dim() > 1 else pos.float()[None, :]) * 1e-30, scores)


def stage1(q: torch.Tensor, w: torch.Tensor, block_means: torch.Tensor, qpos: torch.Tensor, L: int,
           cfg: DSAConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Excerpts: q [(B,) C, H, d], w [(B,) C, H], block_means [(B,) nb, d], qpos [C] (shared by the B rows), L keys.
    -> forced [C, nb] (sink blocks and the blocks reaching into the local window, never competing), and the top
    `n_blocks` of the other causal blocks: bval, bidx [(B,) C, kb] (bval -inf where top-k returned a masked block)."""
    forced_b, bscore = stage1_scores(q, w, block_means, qpos, L, cfg)
    bval, bidx = bscore.topk(min(cfg.n_blocks, bscore.shape[-1]), dim=-1)  # [C, kb]
    return forced_b, bval, bidx


def stage1_scores(q: torch.Tensor, w: torch.Tensor, block_means: torch.Tensor, qpos: torch.Tensor, L: int,
                  cfg: DSAConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """`stage1` before its top-k: forced [C, nb] and the competing blocks' scores [(B,) C, nb] (-inf = not competing)."""
    nb, bs = block_means.shape[-2], cfg.block_size
    bstart = torch.arange(nb, device=qpos.device) * bs  # [nb]
    bend = torch.clamp(bstart + bs, max=L) - 1  # last position inside each block
    qp = qpos[:, None]  # [C, 1]
    causal_b = bstart[None, :] <= qp  # [C, nb]
    local_lo = torch.clamp(qp - max(cfg.local_window, 1) + 1, min=0)  # the query's own block, even with no window
    forced_b = ((bstart[None, :] < cfg.sink_tokens) | (bend[None, :] >= local_lo)) & causal_b
    bscore = _tiebreak(_scores(q, w, block_means), bstart).masked_fill(~causal_b | forced_b, NEG)  # [C, nb]
    return forced_b, bscore


def select_chunk(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, block_means: torch.Tensor,
                 qpos: torch.Tensor, cfg: DSAConfig) -> ChunkSelection:
    """q [C, H, d], w [C, H], keys [L, d], block_means [nb, d], qpos [C] absolute query positions."""
    L, bs = keys.shape[0], cfg.block_size
    dev = keys.device
    qp = qpos[:, None]  # [C, 1]

    # stage 1: excerpts
    forced_b, bval, bidx = stage1(q, w, block_means, qpos, L, cfg)
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


@dataclass
class LastSelection:
    """Decode's selection for the one query at the last position (see `select_last`)."""

    tokens: torch.Tensor  # [T] long, ascending: every key the query attends (sink, top-k picks, local window)
    picks: torch.Tensor | None = None  # [1, K] the top-k picks alone, ascending (record only; as sel_idx)
    pick_scores: torch.Tensor | None = None  # [1, K] their indexer scores (as sel_score)
    blocks: torch.Tensor | None = None  # [1, n_blocks] excerpts kept by stage 1 (-1 = none)


def select_last(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, block_means: torch.Tensor,
                cfg: DSAConfig, record: bool = False) -> LastSelection | None:
    """Decode's fast path: the same keys `select_chunk` picks for one query at position L-1, in about a third of
    the tensor ops (per-op overhead, not arithmetic, is what a decode step costs on a CPU). For the last
    position the forced blocks are two contiguous runs (sink blocks [0, ns), local blocks [fl, nb)), so stage 1
    is a top-k over the free run between them and stage 2 scores only the non-forced candidates.
    q [H, d], w [H], keys [L, d], block_means [nb, d]. None when the runs overlap (short contexts)."""
    L, bs = keys.shape[0], cfg.block_size
    dev = keys.device
    qp = L - 1
    ns = -(-cfg.sink_tokens // bs)  # sink blocks: [0, ns)
    local_lo = max(qp - cfg.local_window + 1, 0)
    fl = local_lo // bs  # first block reaching into the local window: [fl, nb) are forced
    if cfg.local_window < 1 or fl < ns or L <= cfg.sink_tokens:
        return None
    qf, wf = q.float(), w.float()

    # stage 1 over the free blocks [ns, fl) (all full blocks)
    kb = min(cfg.n_blocks, fl - ns)
    d = keys.shape[1]
    picks = torch.empty(0, dtype=torch.long, device=dev)
    if kb > 0:
        bstart = torch.arange(ns, fl, device=dev) * bs
        bscore = _tiebreak((wf @ F.relu(qf @ block_means[ns:fl].float().T))[None], bstart)  # [1, fl - ns]
        picks = bscore.topk(kb, dim=-1)[1][0].sort().values + ns  # [kb], ascending

    # stage 2 over the non-forced candidates, in position order: the rest of the sink blocks, the kept blocks
    # (gathered as whole 64-token rows), the local blocks' tokens before the window
    ar = torch.arange(bs, device=dev)
    cand = torch.cat([torch.arange(cfg.sink_tokens, ns * bs, device=dev), (picks[:, None] * bs + ar).flatten(),
                      torch.arange(fl * bs, local_lo, device=dev)])  # [M]
    kc = torch.cat([keys[cfg.sink_tokens : ns * bs], keys[: fl * bs].view(fl, bs, d)[picks].view(-1, d),
                    keys[fl * bs : local_lo]])  # [M, d]
    tscore = wf @ F.relu(qf @ kc.float().T)  # [M]
    kt = min(cfg.top_k, cand.shape[0])
    tscore = _tiebreak(tscore[None], cand)[0]
    tidx = tscore.topk(kt, sorted=False)[1]  # [kt]
    chosen_m = torch.zeros_like(cand, dtype=torch.bool)
    chosen_m[tidx] = True
    chosen = cand[chosen_m]  # ascending
    sink = torch.arange(min(cfg.sink_tokens, L), device=dev)
    local = torch.arange(local_lo, L, device=dev)
    sel = LastSelection(torch.cat([sink, chosen, local]))
    if record:  # the "picks" record, as select_chunk's sel_idx / sel_score / blocks
        sel.picks, sel.pick_scores = chosen[None], tscore[chosen_m][None]
        blocks = torch.full((min(cfg.n_blocks, block_means.shape[0]),), -1, dtype=torch.long, device=dev)
        blocks[: picks.shape[0]] = picks
        sel.blocks = blocks[None]
    return sel


def chosen_record(sel: ChunkSelection, qpos: torch.Tensor, cfg: DSAConfig
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the indexer chose among what the query attended: the top `top_k` by indexer score of its attended
    keys, where the forced local window competes with the top-k picks instead of being counted whole (a
    window token counts only where it outscores the picks it would displace). The sink and the query itself
    are no choices. Every recorded key was attended.
    -> idx [C, K] (-1 = none), score [C, K] (-inf = none), blocks [C, n_blocks]."""
    ok = sel.mask & (sel.tokens >= cfg.sink_tokens)[None, :] & (sel.tokens[None, :] != qpos[:, None])  # [C, T]
    comp = _tiebreak(sel.scores, sel.tokens).masked_fill(~ok, NEG)
    val, ix = comp.topk(min(cfg.top_k, comp.shape[1]), dim=-1)  # [C, K]
    idx = torch.where(val > NEG, sel.tokens[ix], torch.full_like(ix, -1))
    return idx, val, sel.blocks


def select_all_dense(L: int, qpos: torch.Tensor) -> torch.Tensor:
    """Causal mask [C, L] for the dense path (keeps everything causal)."""
    return torch.arange(L, device=qpos.device)[None, :] <= qpos[:, None]
