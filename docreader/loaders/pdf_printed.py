"""Page numbers printed on the pages themselves, for PDFs that define no page labels.

A PDF's /PageLabels (pypdf `page_labels`) say what a viewer shows, and win when present. Many PDFs have none
but print a number in a header or footer ("Page -14-", "- 7 -", "Page 3 of 20", "12"), often not the page's
index (front matter, a filing cut from a larger document): citing "p. 10" beside a page that says "Page -14-"
sends the reader to the wrong place. Only the first or last non-empty line of a page counts, and only when it
is nothing but a page number; the numbers found must rise with the pages, else none is used (a column of
figures is not a page number).
"""

from __future__ import annotations

import re

_DASH = r"[-–—]"
# "Page -14-", "page 14", "p. 14", "Page 3 of 20", "- 14 -", "-14-", "14"
_ARABIC = re.compile(rf"^(?:(?:page|pg\.?|p\.)\s*)?{_DASH}?\s*(\d{{1,4}})\s*{_DASH}?(?:\s+of\s+\d{{1,4}})?$", re.I)
# roman numerals only with a word or dashes around them: a line "mix" or "dim" is not a page number
_ROMAN = re.compile(rf"^(?:(?:page|p\.)\s*({_DASH}?)\s*([ivxlc]{{1,7}})\s*{_DASH}?|{_DASH}\s*([ivxlc]{{1,7}})\s*{_DASH})$",
                    re.I)
_VALID_ROMAN = re.compile(r"^c{0,3}(xc|xl|l?x{0,3})(ix|iv|v?i{0,3})$", re.I)


def _number(line: str) -> str | None:
    line = " ".join(line.split())
    m = _ARABIC.match(line)
    if m:
        return str(int(m.group(1)))
    m = _ROMAN.match(line)
    if m:
        roman = (m.group(2) or m.group(3)).lower()
        return roman if _VALID_ROMAN.match(roman) else None
    return None


def _edge_number(text: str) -> str | None:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    return _number(lines[-1]) or _number(lines[0])  # footers are the commoner place


def printed_numbers(texts: list[str]) -> list[str | None]:
    """Per page, the number printed in its header or footer (None where there is none). All None when the
    arabic ones found do not rise strictly from page to page."""
    found = [_edge_number(t) for t in texts]
    arabic = [int(n) for n in found if n is not None and n.isdigit()]
    if any(b <= a for a, b in zip(arabic, arabic[1:])):
        return [None] * len(texts)
    return found
