"""Selection record: an optional hook exposing what the indexer selected, per layer and query token.

Off (the default) it costs nothing: the attention path checks one attribute. On, it receives each
chunk's selection as computed for attention, so provenance needs no second pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Selection:
    layer: int
    batch: int
    qpos: torch.Tensor  # [C] absolute query positions
    idx: torch.Tensor  # [C, K] attended key positions, best indexer score first (-1 = none); top-k picks and the
    # forced local window, never the attention sink
    score: torch.Tensor  # [C, K] indexer scores (fp32; -inf where none)
    blocks: torch.Tensor  # [C, n_blocks] excerpts kept by stage 1 (-1 = none)


@dataclass
class SelectionRecorder:
    """Keeps selections for queries at positions >= record_from; `on_select` streams them instead."""

    record_from: int = 0
    on_select: Callable[[Selection], None] | None = None
    selections: list[Selection] = field(default_factory=list)

    def wants(self, last_qpos: int) -> bool:
        return last_qpos >= self.record_from

    def add(self, layer: int, batch: int, qpos: torch.Tensor, idx: torch.Tensor, score: torch.Tensor,
            blocks: torch.Tensor) -> None:
        keep = qpos >= self.record_from
        if not bool(keep.all()):
            qpos, idx, score, blocks = qpos[keep], idx[keep], score[keep], blocks[keep]
        sel = Selection(layer, batch, qpos, idx, score, blocks)
        if self.on_select is not None:
            self.on_select(sel)
        else:
            self.selections.append(sel)
