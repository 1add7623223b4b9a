"""The `Document` every loader produces: the text the model reads plus a map back to the source.

Character offsets are the lingua franca: tokens map to characters (tokenizer offsets), characters map to
regions (page, section, message) and lines. Everything a user sees ("p. 7", "chapter III, line 41",
"message 212 — alice, 14:03") is derived from these two maps.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Region:
    """A contiguous [start, end) range of the document text with its place in the source."""

    start: int
    end: int
    kind: str  # "page" | "section" | "message"
    index: int  # 0-based position among regions of this kind
    label: str  # how a user names it: "p. 7", "chapter III", "message 212 — alice, 14:03"
    meta: dict = field(default_factory=dict)  # e.g. {"page": 7, "page_label": "vii"} or {"speaker": "alice"}


@dataclass
class Document:
    path: str
    format: str  # "pdf" | "txt" | "md" | "docx" | "html" | "epub" | "chat"
    text: str
    regions: list[Region] = field(default_factory=list)  # sorted by start, non-overlapping per kind
    meta: dict = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def kind(self) -> str:
        """The document's family: "contract"-like paged docs, "book", or "chat"."""
        return self.meta.get("kind", self.format)

    def _line_starts(self) -> list[int]:
        # Cached against the text it was built from, so a caller replacing `text` gets fresh numbers.
        cached = self.__dict__.get("_line_starts_cache")
        if cached is None or cached[0] is not self.text:
            starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
            cached = (self.text, starts)
            self.__dict__["_line_starts_cache"] = cached
        return cached[1]

    def _regions_by_kind(self) -> dict[str, tuple[list[int], list[Region]]]:
        """Regions of each kind sorted by start, with their starts, for bisect look-ups."""
        cached = self.__dict__.get("_regions_cache")
        key = (id(self.regions), len(self.regions))
        if cached is None or cached[0] != key:
            by_kind: dict[str, list[Region]] = {}
            for r in sorted(self.regions, key=lambda r: (r.start, r.end)):
                by_kind.setdefault(r.kind, []).append(r)
            index = {k: ([r.start for r in rs], rs) for k, rs in by_kind.items()}
            cached = (key, index)
            self.__dict__["_regions_cache"] = cached
        return cached[1]

    def line_of(self, offset: int) -> int:
        """1-based line number of a character offset in the rendered text."""
        return bisect.bisect_right(self._line_starts(), offset)

    def regions_at(self, start: int, end: int | None = None) -> list[Region]:
        """Regions overlapping [start, end) (or containing `start` when end is None)."""
        end = start + 1 if end is None else max(end, start + 1)
        hits: list[Region] = []
        for starts, regions in self._regions_by_kind().values():
            # Regions of one kind don't overlap, so only those starting before `end` can hit, and
            # walking back from there stops at the first one that ends before `start`.
            i = bisect.bisect_left(starts, end) - 1
            kind_hits = []
            while i >= 0 and regions[i].end > start:
                kind_hits.append(regions[i])
                i -= 1
            hits.extend(reversed(kind_hits))
        return sorted(hits, key=lambda r: (r.start, r.end))

    def locate(self, start: int, end: int) -> dict:
        """Where [start, end) lies in the source: fields for --json plus a human `label`."""
        loc: dict = {"char_start": start, "char_end": end, "line": self.line_of(start),
                     "line_end": self.line_of(max(start, end - 1))}
        parts: list[str] = []
        for kind in ("page", "section", "message"):
            hits = [r for r in self.regions_at(start, end) if r.kind == kind]
            if not hits:
                continue
            first, last = hits[0], hits[-1]
            loc[kind] = first.index + 1
            if kind == "page":
                loc["page_label"] = first.meta.get("page_label", str(first.index + 1))
            if kind == "message":
                loc.update({k: first.meta.get(k) for k in ("speaker", "time")})
            parts.append(first.label if first is last else f"{first.label} – {last.label}")
            if first is not last:
                loc[f"{kind}_end"] = last.index + 1
        if not any(r.kind == "page" for r in self.regions):
            parts.append(f"line {loc['line']}")
        loc["label"] = ", ".join(parts)
        return loc
