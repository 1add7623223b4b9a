"""HTML pages: visible text only, h1–h6 as section regions."""

from __future__ import annotations

from docreader.document import Document
from docreader.loaders.budget import Budget
from docreader.loaders.builder import section_regions, short_label
from docreader.loaders.html_text import extract


def heading_starts(headings: list[tuple[int, int, str]], offset: int = 0) -> list[tuple[int, str, dict]]:
    """Section starts from extracted headings, each with the path of titles above it."""
    starts, trail = [], []
    for start, level, title in headings:
        trail = trail[: level - 1] + [title]
        starts.append((offset + start, short_label(title), {"level": level, "path": [short_label(t) for t in trail]}))
    return starts


def load_html(path: str, html: str, encoding: str, budget: Budget | None = None) -> Document:
    page = extract(html)
    text = page.text
    if budget is not None:
        budget.add(len(text))
    meta = {"kind": "book" if len(page.headings) > 2 else "text", "encoding": encoding}
    if page.title:
        meta["title"] = page.title
    return Document(path=path, format="html", text=text,
                    regions=section_regions(heading_starts(page.headings), text), meta=meta)
