"""Markdown: the text as-is, with ATX (`## Chapter 1`) and setext headings as section regions."""

from __future__ import annotations

import re

from docreader.document import Document
from docreader.loaders.builder import section_regions, short_label

ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")
_NOT_PARAGRAPH = re.compile(r"^\s*([-*+>]|\d+[.)]|#|\||```|~~~)")


def headings(text: str) -> list[tuple[int, int, str]]:
    """(offset, level, title) of each heading, skipping fenced code blocks."""
    out: list[tuple[int, int, str]] = []
    fence: str | None = None
    offset = 0
    prev: tuple[int, str] | None = None  # offset and text of the previous paragraph line
    for line in text.split("\n"):
        f = FENCE.match(line)
        if fence:
            if f and f.group(1) == fence:
                fence = None
        elif f:
            fence = f.group(1)
            prev = None
        elif m := ATX.match(line):
            out.append((offset, len(m.group(1)), m.group(2).strip()))
            prev = None
        elif prev and (m := SETEXT.match(line)) and (m.group(1)[0] == "=" or len(m.group(1)) >= 2):
            out.append((prev[0], 1 if m.group(1)[0] == "=" else 2, prev[1].strip()))
            prev = None
        elif line.strip() and not _NOT_PARAGRAPH.match(line):
            prev = (offset, line) if prev is None else None  # only one-line paragraphs become setext titles
        else:
            prev = None
        offset += len(line) + 1
    return out


def count_headings(text: str, limit: int = 2) -> int:
    """How many ATX headings the first lines hold (format detection stops at `limit`)."""
    n = 0
    for line in text[:200_000].split("\n"):
        if ATX.match(line):
            n += 1
            if n >= limit:
                break
    return n


def load_markdown(path: str, text: str, encoding: str) -> Document:
    starts, trail, meta = [], [], {"encoding": encoding}
    for offset, level, title in headings(text):
        trail = trail[: level - 1] + [title]
        label = short_label(title.rstrip(":").strip()) or f"heading {len(starts) + 1}"
        starts.append((offset, label, {"level": level, "path": [short_label(t) for t in trail]}))
        key, _, value = title.partition(":")
        if key.strip().lower() in ("title", "author") and value.strip() and key.strip().lower() not in meta:
            meta[key.strip().lower()] = value.strip()
        elif level == 1 and "title" not in meta:
            meta["title"] = title
    meta["kind"] = "book"
    return Document(path=path, format="md", text=text, regions=section_regions(starts, text), meta=meta)
