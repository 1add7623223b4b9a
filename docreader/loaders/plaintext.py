"""Plain text: as-is; lines like `CHAPTER III.` set off by blank lines become section regions."""

from __future__ import annotations

import re

from docreader.document import Document
from docreader.loaders.builder import section_regions, short_label

CHAPTER = re.compile(
    r"^[ \t]{0,8}((?:CHAPTER|Chapter|BOOK|Book|PART|Part|ACT|Act|SCENE|Scene|STAVE|Stave)[ \t]+"
    r"(?:[IVXLCDM]+|\d+|[A-Z][a-z]+|[A-Z]+)\b[^\n]{0,60})$", re.M)


def chapter_starts(text: str) -> list[tuple[int, str, dict]]:
    """Chapter-like lines with a blank line (or the start) before them; needs two to count."""
    starts = []
    for m in CHAPTER.finditer(text):
        before = text[max(0, m.start() - 2): m.start()]
        if m.start() == 0 or before.endswith("\n\n") or before == "\n":
            starts.append((m.start(), short_label(m.group(1).rstrip(" .:")), {"level": 1}))
    return starts if len(starts) >= 2 else []


def load_text(path: str, text: str, encoding: str) -> Document:
    regions = section_regions(chapter_starts(text), text)
    kind = "book" if regions else "text"
    return Document(path=path, format="txt", text=text, regions=regions, meta={"kind": kind, "encoding": encoding})
