"""Selection record: an optional hook exposing what the indexer selected, per layer and query token.

Off (the default) it costs nothing: the attention path checks one attribute. On, each sparse layer reports
the recorded queries' selections as it computes them, so provenance needs no second pass.

What a record holds, by `weighting`:
- "picks" (default): the indexer's top-k picks alone, with their indexer scores: forced keys (sink, local
  window, the query itself) never count, so the last ~128 document tokens before the question can be cited
  only by later queries (answer tokens past the window).
- "choice": what the indexer chose among what the query attended: the top `top_k` of its attended keys by
  indexer score, the forced local window competing with the picks instead of being counted whole (the old
  record counted it whole, and the document's last tokens ranked first for every question). The indexer
  scores recent tokens high, so the window still wins most of its places.
- "attention": every key the sparse attention read apart from the sink, with its attention probability
  (mean over the query heads) in `weight`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

WEIGHTINGS = ("picks", "choice", "attention")


@dataclass
class Selection:
    layer: int
    batch: int
    qpos: torch.Tensor  # [C] absolute query positions
    idx: torch.Tensor  # [C, K] key positions, best first (-1 = none); never the attention sink
    score: torch.Tensor  # [C, K] indexer scores (fp32; -inf where none)
    blocks: torch.Tensor  # [C, n_blocks] excerpts kept by stage 1 (-1 = none)
    weight: torch.Tensor | None = None  # [C, K] attention probabilities ("attention" weighting), else None


@dataclass
class SelectionRecorder:
    """Keeps selections of the queries at positions in `ranges` ([start, end) pairs; end None = open), or at
    positions >= record_from when no ranges are given; `on_select` streams them instead of keeping them."""

    record_from: int = 0
    on_select: Callable[[Selection], None] | None = None
    selections: list[Selection] = field(default_factory=list)
    ranges: list[tuple[int, int | None]] | None = None
    weighting: str = "picks"

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.ranges is not None:
            self.record_from = min((a for a, _ in self.ranges), default=0)

    def wants(self, first_qpos: int, last_qpos: int | None = None) -> bool:
        """Does any query position in [first_qpos, last_qpos] get recorded?"""
        last = first_qpos if last_qpos is None else last_qpos
        if self.ranges is None:
            return last >= self.record_from
        return any(first_qpos < (e if e is not None else last + 1) and last >= a for a, e in self.ranges)

    def keeps(self, qpos: torch.Tensor) -> torch.Tensor:
        """[C] bool: which of these query positions are recorded."""
        if self.ranges is None:
            return qpos >= self.record_from
        keep = torch.zeros_like(qpos, dtype=torch.bool)
        for a, e in self.ranges:
            keep |= (qpos >= a) & (qpos < e if e is not None else True)
        return keep

    def add(self, layer: int, batch: int, qpos: torch.Tensor, idx: torch.Tensor, score: torch.Tensor,
            blocks: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        keep = self.keeps(qpos)
        if not bool(keep.any()):
            return
        if not bool(keep.all()):
            qpos, idx, score, blocks = qpos[keep], idx[keep], score[keep], blocks[keep]
            weight = weight[keep] if weight is not None else None
        sel = Selection(layer, batch, qpos, idx, score, blocks, weight)
        if self.on_select is not None:
            self.on_select(sel)
        else:
            self.selections.append(sel)
