"""From indexer selections to scored character spans of the source.

Every sparse layer reports, for each question and generated token, which keys its indexer selected by
score (forced sink/local-window keys are not reported). Each query's selection is weighted by the softmax
of its indexer scores, summed over queries and layers, and divided by their count: a token's weight is
the average share of selection it received. The hottest document tokens are merged into spans (never
across a page or message boundary) and ranked by total weight.

These are *selected/attended spans*: what the model's sparse attention read, not proof of what the
answer relied on (bench/ measures how faithful they are).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsa import Selection, SelectionRecorder

from .document import Document
from .prompt import Prompt


class SelectionAccumulator:
    """Streams selections into per-token weights [seq_len] without keeping them."""

    def __init__(self, seq_len: int, record_from: int):
        self.weights = torch.zeros(seq_len + 4096, dtype=torch.float64)
        self.rows = 0
        self.recorder = SelectionRecorder(record_from=record_from, on_select=self.add)

    def add(self, sel: Selection) -> None:
        valid = sel.idx >= 0  # [C, K]
        p = torch.softmax(sel.score.double().masked_fill(~valid, float("-inf")), dim=-1)
        p = torch.nan_to_num(p, nan=0.0)
        idx = sel.idx.clamp(min=0)
        need = int(idx.max()) + 1 if idx.numel() else 0
        if need > self.weights.shape[0]:
            self.weights = torch.cat([self.weights, torch.zeros(need - self.weights.shape[0] + 4096,
                                                                dtype=torch.float64)])
        self.weights.index_add_(0, idx.flatten(), (p * valid).flatten())
        self.rows += int(valid.any(-1).sum())


@dataclass
class Span:
    char_start: int
    char_end: int
    score: float
    rank: int
    location: dict  # Document.locate(): page/line/message fields and a label
    text: str


def spans_from_weights(weights: torch.Tensor, rows: int, prompt: Prompt, document: Document,
                       sink_tokens: int, max_spans: int = 20, hot_tokens: int = 96, gap: int = 4) -> list[Span]:
    """Merge the hottest document tokens into ranked spans (sink and non-document tokens excluded)."""
    if rows == 0:
        return []
    w = weights[prompt.doc_start : prompt.doc_end].clone() / rows  # per document token
    first_doc = max(0, sink_tokens - prompt.doc_start)
    w[:first_doc] = 0.0  # the attention sink absorbs selection regardless of content
    n = int((w > 0).sum())
    if n == 0:
        return []
    top = torch.topk(w, min(hot_tokens, n)).indices.sort().values.tolist()
    offsets = prompt.doc_offsets
    groups: list[list[int]] = []
    for t in top:
        if groups and t - groups[-1][-1] <= gap and not _crosses(document, offsets[groups[-1][-1]][1],
                                                                     offsets[t][0]):
            groups[-1].append(t)
        else:
            groups.append([t])
    spans = []
    for g in groups:
        start, end = offsets[g[0]][0], offsets[g[-1]][1]
        while start < end and document.text[start].isspace():
            start += 1
        if end <= start:
            continue
        score = float(w[g[0] : g[-1] + 1].sum())
        spans.append(Span(start, end, score, 0, document.locate(start, end), document.text[start:end]))
    spans.sort(key=lambda s: -s.score)
    for i, s in enumerate(spans[:max_spans]):
        s.rank = i + 1
    return spans[:max_spans]


def _crosses(document: Document, a: int, b: int) -> bool:
    """True when the previous token (ending at char a) and the next (starting at b) lie in different
    pages/messages/sections: spans are never merged across such a boundary."""
    left = {(r.kind, r.index) for r in document.regions_at(max(a - 1, 0))}
    right = {(r.kind, r.index) for r in document.regions_at(b)}
    return left != right
