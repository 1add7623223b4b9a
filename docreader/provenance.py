"""From indexer selections to scored character spans of the source.

Only the current question's tokens and the answer's are recorded (never the template, earlier turns or
their answers: a follow-up's spans are its own). Each sparse layer reports, per recorded query, a weighted
set of keys (see `dsa.record`):
- "picks" (default): the indexer's top-k picks alone (forced keys never count), weighted by the softmax of
  the indexer scores; on 36 questions over 12 real contract PDFs it put 21% of the top-3 spans in the
  document's last 2% (choice 52%, attention 83%, the old record 2026-12-02 see bench/RESULTS-provenance.md);
- "choice": what the indexer chose among what the query attended, the forced local window
  competing with the top-k picks instead of being counted whole; weighted by the softmax of the indexer
  scores;
- "attention": every attended key but the sink, weighted by its attention probability.
Weights are summed over queries and layers and divided by their count: a token's weight is the average
share it received. Excerpts of ~32 tokens are ranked by the weight they received (never across a page or
message boundary).

These are *selected/attended spans*: what the model's sparse attention read, not proof of what the
answer relied on (bench/ measures how faithful they are).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dsa import Selection, SelectionRecorder

from .document import Document
from .prompt import Prompt


def record_ranges(prompt: Prompt) -> list[tuple[int, int | None]]:
    """Query positions whose selections are provenance: the current question, and from the last prompt token
    on (it predicts the first answer token) every answer token."""
    return [prompt.question_span, (len(prompt.input_ids) - 1, None)]


class SelectionAccumulator:
    """Streams selections into per-token weights [seq_len] without keeping them."""

    def __init__(self, seq_len: int, record_from: int = 0, ranges: list | None = None, weighting: str = "picks",
                 per_query: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None):
        self.weights = torch.zeros(seq_len + 4096, dtype=torch.float64)
        self.rows = 0
        self.per_query = per_query  # (qpos [C], idx [C, K], weight [C, K]) of each selection, e.g. TokenCapture.add
        self.recorder = SelectionRecorder(record_from=record_from, on_select=self.add, ranges=ranges,
                                          weighting=weighting)

    def add(self, sel: Selection) -> None:
        sel_idx = sel.idx.cpu()
        valid = sel_idx >= 0  # [C, K]
        if sel.weight is not None:
            p = sel.weight.double().cpu()
        else:
            p = torch.softmax(sel.score.double().cpu().masked_fill(~valid, float("-inf")), dim=-1)
            p = torch.nan_to_num(p, nan=0.0)
        idx = sel_idx.clamp(min=0)
        need = int(idx.max()) + 1 if idx.numel() else 0
        if need > self.weights.shape[0]:
            self.weights = torch.cat([self.weights, torch.zeros(need - self.weights.shape[0] + 4096,
                                                                dtype=torch.float64)])
        pv = p * valid
        self.weights.index_add_(0, idx.flatten(), pv.flatten())
        self.rows += int(valid.any(-1).sum())
        if self.per_query is not None:
            self.per_query(sel.qpos.cpu(), idx, pv)


@dataclass
class Span:
    char_start: int
    char_end: int
    score: float
    rank: int
    location: dict  # Document.locate(): page/line/message fields and a label
    text: str


def spans_from_weights(weights: torch.Tensor, rows: int, prompt: Prompt, document: Document,
                       sink_tokens: int, max_spans: int = 20, window: int = 32,
                       cap_quantile: float = 0.99) -> list[Span]:
    """Rank excerpts of about `window` tokens by the selection weight they received.

    Single tokens (often a frequent word such as "the") can draw a large share of selection whatever
    the question is, so each token's weight is capped at the `cap_quantile` of the document's weights
    before summing over a window; excerpts are then picked greedily, best first, without overlap, and
    cut at page/message boundaries (the heavier side is kept)."""
    wc = capped_doc_weights(weights, rows, prompt, sink_tokens, cap_quantile)
    if wc is None:
        return []
    n, W = wc.shape[0], min(window, wc.shape[0])
    cs = torch.cat([wc.new_zeros(1), wc.cumsum(0)])
    win = cs[W:] - cs[:-W]  # [n - W + 1] weight of the window starting at each token
    offsets = prompt.doc_offsets
    found: list[tuple[float, int, int]] = []  # (score, char_start, char_end)
    while True:
        i = int(win.argmax())
        best = float(win[i])
        # a window's weight bounds the score of any excerpt cut from it: stop once none can enter the top
        if best <= 0 or (len(found) >= max_spans and best <= sorted(found, reverse=True)[max_spans - 1][0]):
            break
        a, b = _heaviest_piece(document, offsets, wc, i, i + W)
        win[max(0, a - W + 1) : b] = -1.0  # no later excerpt overlaps this one
        while a < b and wc[a] == 0:
            a += 1
        while b > a and wc[b - 1] == 0:
            b -= 1
        start, end = offsets[a][0], offsets[b - 1][1] if b > a else offsets[a][0]
        while start < end and document.text[start].isspace():
            start += 1
        while end > start and document.text[end - 1].isspace():
            end -= 1
        if end > start:
            found.append((float(wc[a:b].sum()), start, end))
    found.sort(key=lambda f: (-f[0], f[1]))
    return [Span(start, end, score, rank, document.locate(start, end), document.text[start:end])
            for rank, (score, start, end) in enumerate(found[:max_spans], 1)]


def capped_doc_weights(weights: torch.Tensor, rows: int, prompt: Prompt, sink_tokens: int,
                       cap_quantile: float = 0.99) -> torch.Tensor | None:
    """Per document token: the average selection share it received, the sink zeroed and each token capped at
    the `cap_quantile` of the document's weights (see `spans_from_weights`); None when nothing was selected."""
    if rows == 0:
        return None
    w = weights[prompt.doc_start : prompt.doc_end].clone() / rows  # per document token
    w[: max(0, sink_tokens - prompt.doc_start)] = 0.0  # the sink absorbs selection regardless of content
    pos = w[w > 0]
    if pos.numel() == 0:
        return None
    cap = torch.quantile(pos.float(), cap_quantile).item() if cap_quantile < 1 and pos.numel() > 1 else float(pos.max())
    return w.clamp(max=cap)


def _heaviest_piece(document: Document, offsets, w: torch.Tensor, a: int, b: int) -> tuple[int, int]:
    """Tokens [a, b) cut where consecutive tokens lie in different pages/messages; the heaviest piece."""
    pieces, start = [], a
    for t in range(a + 1, b):
        if _crosses(document, offsets[t - 1][1], offsets[t][0]):
            pieces.append((start, t))
            start = t
    pieces.append((start, b))
    return max(pieces, key=lambda p: float(w[p[0] : p[1]].sum()))


def _crosses(document: Document, a: int, b: int) -> bool:
    """True when the previous token (ending at char a) and the next (starting at b) lie in different
    pages/messages/sections: spans are never merged across such a boundary."""
    left = {(r.kind, r.index) for r in document.regions_at(max(a - 1, 0))}
    right = {(r.kind, r.index) for r in document.regions_at(b)}
    return left != right
