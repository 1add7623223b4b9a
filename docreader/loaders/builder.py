"""Accumulate rendered text and the regions that point into it, so offsets can never drift."""

from __future__ import annotations

import re

from docreader.document import Region
from docreader.loaders.budget import Budget

LABEL_MAX = 60


def short_label(text: str, limit: int = LABEL_MAX) -> str:
    """A heading as a one-line label: whitespace collapsed, trimmed to about `limit` characters."""
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] if " " in text[: limit] else text[:limit]
    return cut.rstrip(" ,;:.-") + "…"


class TextBuilder:
    """Append-only text with regions recorded at the offsets where pieces were written.

    With a `budget`, every piece is charged to it as it is written, so expansion stops the load early."""

    def __init__(self, budget: Budget | None = None) -> None:
        self.budget = budget
        self._parts: list[str] = []
        self._length = 0
        self._tail = ""  # last few characters written, to decide on separators
        self.regions: list[Region] = []
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return self._length

    def write(self, piece: str) -> tuple[int, int]:
        """Append `piece`; return its [start, end) offsets."""
        start = self._length
        if piece:
            if self.budget is not None:
                self.budget.add(len(piece))
            self._parts.append(piece)
            self._length += len(piece)
            self._tail = (self._tail + piece)[-4:]
        return start, self._length

    def separate(self, newlines: int = 2) -> None:
        """Make the text end with at least `newlines` newlines (nothing at the very beginning)."""
        if not self._length:
            return
        have = len(self._tail) - len(self._tail.rstrip("\n"))
        if have < newlines:
            self.write("\n" * (newlines - have))

    def add_region(self, kind: str, start: int, end: int, label: str, meta: dict | None = None) -> Region:
        """Record a region of `kind`; its index is its position among regions of that kind."""
        index = self._counts.get(kind, 0)
        self._counts[kind] = index + 1
        region = Region(start=start, end=end, kind=kind, index=index, label=label, meta=dict(meta or {}))
        self.regions.append(region)
        return region

    def text(self) -> str:
        joined = "".join(self._parts)
        self._parts = [joined]
        return joined

    def sorted_regions(self) -> list[Region]:
        return sorted(self.regions, key=lambda r: (r.start, r.end, r.kind))


def section_regions(starts: list[tuple[int, str, dict]], text: str) -> list[Region]:
    """Sections from (offset, label, meta) heading starts: each runs to the next heading or the end.

    Headings of every level cut the text, so sections never nest or overlap; the heading path is kept
    in meta by callers that know it.
    """
    cleaned: list[tuple[int, str, dict]] = []
    for offset, label, meta in sorted(starts, key=lambda s: s[0]):
        if not label or not 0 <= offset < len(text):
            continue
        if cleaned and cleaned[-1][0] == offset:
            cleaned[-1] = (offset, label, meta)  # the later (inner) title wins at one offset
            continue
        cleaned.append((offset, label, meta))
    regions = []
    for i, (offset, label, meta) in enumerate(cleaned):
        end = cleaned[i + 1][0] if i + 1 < len(cleaned) else len(text)
        stripped = len(text[offset:end].rstrip())
        end = offset + max(stripped, 1)
        regions.append(Region(start=offset, end=end, kind="section", index=i, label=label, meta=dict(meta)))
    return regions
