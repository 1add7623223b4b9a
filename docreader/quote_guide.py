"""Copy-guided quoting: while the model writes a `Quote: "..."` line, every token must keep the quote a passage
of the document.

Why: the answer format (prompts/system.txt) asks for the passage first, then the answer. A 135M model asked to
copy often paraphrases ("Section 2.3 governs ..."), so the quote cannot be verified and the answer that
follows rests on words the document does not contain (bench/RESULTS-grounded.md). Copying is a constraint we
can check as we decode: at each step of a quote, the highest-scoring of the model's `top` candidates whose text
keeps the quote a substring of the document (whitespace runs folded to one space) is taken; a closing `"` or
line break is allowed once the quote holds a word; when no candidate fits, the quote is closed there. Outside
quotes, and on a quote line that already left the document (the guide never forces its first word), decoding is
the model's own.

Modes: "document" (anywhere in it), "spans" (the quote must also *start* within `margin` characters of one of
the passages the sparse attention selected most so far, `anchors()`; when none of the candidates for its first
word can, anywhere in the document), "off". What it does not do is prove the passage supports the answer: a
verified quote is a string match (docreader.quotes). `replaced` counts the tokens the guide chose instead of the
model's own first choice, and is logged with every answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

TOP = 20  # candidates looked at per step, best first
MAX_QUOTE_CHARS = 600  # a quote this long is closed
ANCHOR_MARGIN = 200  # characters around an anchor passage where a quote may start ("spans" mode)
_WS = re.compile(r"\s+")
_QUOTE_LINE = re.compile(r"(?:^|\n)[ \t>*_#-]*quote[ \t*_]*:[ \t*_]*[\"“]([^\n]*)$", re.I)


def fold(text: str) -> str:
    return _WS.sub(" ", text)


MODES = ("off", "document", "spans")


@dataclass
class QuoteGuide:
    tokenizer: object
    document: str
    anchors: Callable[[], list[tuple[int, int]]] | None = None  # "spans" mode: [(char_start, char_end)] of the document
    top: int = TOP
    max_chars: int = MAX_QUOTE_CHARS
    margin: int = ANCHOR_MARGIN
    replaced: int = 0  # tokens chosen instead of the model's own first choice
    _doc: str = field(init=False, repr=False)
    _ranges: list[tuple[int, int]] | None = field(init=False, repr=False, default=None)
    _pieces: dict[int, str] = field(init=False, repr=False, default_factory=dict)
    _close: int | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self._doc = fold(self.document)
        ids = self.tokenizer.encode('"', add_special_tokens=False)
        self._close = ids[0] if len(ids) == 1 else None

    def piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = self.tokenizer.decode([token], skip_special_tokens=True)
        return self._pieces[token]

    def _level(self, quote: str) -> int:
        """2: the quote starts near an anchor passage; 1: it is somewhere in the document; 0: it is not."""
        q = fold(quote).lstrip()
        if q not in self._doc:
            return 0
        for a, b in self._anchor_ranges():
            i = self._doc.find(q, a, b + len(q))
            if 0 <= i < b:
                return 2
        return 1

    def _anchor_ranges(self) -> list[tuple[int, int]]:
        if self._ranges is None:  # taken when the first quote starts: what the attention selected by then
            spans = self.anchors() if self.anchors else []
            # the offset map only when there are anchors ("spans" mode): 0.3 s for a novel on a slow CPU
            starts = folded_offsets(self.document) if spans else []
            n = len(self.document)
            self._ranges = [(starts[max(0, a - self.margin)], starts[min(n, b + self.margin)]) for a, b in spans]
        return self._ranges

    def _reaches(self, quote: str, piece: str) -> int:
        """The level `quote` + `piece` keeps (0: not allowed)."""
        if not piece or "\ufffd" in piece:
            return 0
        ends = [i for i in (piece.find('"'), piece.find("\n")) if i >= 0]
        if ends:  # closes the quote (or its line): what it keeps must still be the document's, and hold a word
            kept = quote + piece[: min(ends)]
            return self._level(kept) if fold(kept).strip() else 0
        return self._level(quote + piece) if fold(quote + piece).strip() else 0

    def choose(self, scores: torch.Tensor, text: str) -> int:
        """The next token: the model's best unless it is writing a quote (`text`: the answer so far)."""
        best = int(scores.argmax())
        m = _QUOTE_LINE.search(text)
        if m is None:
            return best
        quote = m.group(1)
        started = bool(fold(quote).strip())
        level = self._level(quote) if started else (2 if self._anchor_ranges() else 1)
        if level == 0:  # this quote left the document: free
            return best
        if started and len(fold(quote).strip()) >= self.max_chars and self._close is not None:
            return self._take(self._close, best)
        candidates = scores.topk(min(self.top, scores.numel())).indices.tolist()
        for need in (level, 1) if not started else (level,):
            for token in candidates:
                if self._reaches(quote, self.piece(token)) >= need:
                    return self._take(token, best)
        if started and self._close is not None:  # nothing fits: the quote ends here
            return self._take(self._close, best)
        return best

    def _take(self, token: int, best: int) -> int:
        self.replaced += token != best
        return token


def folded_offsets(text: str) -> list[int]:
    """The offset in `fold(text)` of each original offset 0..len(text)."""
    keep = np.ones(len(text), dtype=np.int64)
    for m in _WS.finditer(text):
        keep[m.start() + 1 : m.end()] = 0  # a run keeps its first character, as one space
    return np.concatenate([[0], np.cumsum(keep)]).tolist()
