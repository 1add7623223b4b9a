"""What `ask_document` tells an agent: the answer, the passages it quotes and the passages the model read
most, each quoted with where it is (page and line), so the agent can cite without a second call.

Before, the content named the most-read parts by region label only ("p. 2; p. 2; p. 2"): three spans on
one page read the same and said nothing an agent could quote.
"""

from __future__ import annotations

import re

from ..document import Document
from ..quotes import quote_line

PASSAGE_CHARS = 240  # each passage's text in the content (whitespace folded); the artifact has it whole


def where(doc: Document, start: int, end: int, label: str = "") -> str:
    """`p. 2, line 5` / `p. 2, lines 5–7` (lines counted within the page); unpaged documents: the region
    label with its line range (`chapter III, lines 41–43`, `lines 1–4`)."""
    pages = [r for r in doc.regions_at(start, end) if r.kind == "page"]
    first = doc.line_of(pages[0].start) - 1 if pages else 0
    a, b = doc.line_of(start) - first, doc.line_of(max(start, end - 1)) - first
    lines = f"line {a}" if a == b else f"lines {a}–{b}"
    head = (label or pages[0].label) if pages else re.sub(r"(^|, )line \d+$", "", label)  # locate(): "…, line N"
    return f"{head}, {lines}" if head else lines


def _clip(text: str, limit: int = PASSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def answer_summary(ans, passages: int = 3) -> str:
    """The tool's content for an engine.Answer: short answer, checked quotes, top `passages` spans, log id."""
    d = ans.document
    lines = [f"Answer: {ans.answer_text or ans.text}".rstrip()]
    for q in ans.quotes:
        j = q.to_json()
        if q.verified:
            j["label"] = where(d, q.char_start, q.char_end, j.get("label", ""))
            j["text"] = d.text[q.char_start:q.char_end]  # the passage as the document has it
        lines.append(quote_line(j, PASSAGE_CHARS))
    top = ans.spans[:passages]
    if top:
        lines.append("Passages the model read most (sparse attention; not proof of use):")
        lines += [f'{s.rank}. {where(d, s.char_start, s.char_end, s.location.get("label", ""))}: "{_clip(s.text)}"'
                  for s in top]
    ref = f"answer #{ans.id}" if ans.id is not None else "answer (not logged)"
    more = f"; audit_answer({ans.id}) lists all {len(ans.spans)} passages" if ans.id is not None else ""
    lines.append(f"[{ref} on {d.path}{more}]")
    return "\n".join(lines)
