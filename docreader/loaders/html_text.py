"""Visible text of an HTML/XHTML page with its headings and anchor offsets (stdlib html.parser).

Shared by the HTML and EPUB loaders. Whitespace is collapsed as a browser would, block elements
start new lines, table cells are separated by " | " with one row a line.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

SKIP = {"script", "style", "head", "template", "noscript", "svg", "math", "iframe", "object", "canvas", "select"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
        "track", "wbr", "basefont", "frame", "keygen"}
PARAGRAPH = {"p", "blockquote", "pre", "table", "ul", "ol", "dl", "figure", "hr", "section", "article",
             "header", "footer", "aside", "nav", "main", "address", "fieldset", "details"}
LINE = {"div", "li", "dt", "dd", "tr", "caption", "figcaption", "form", "summary", "thead", "tbody", "tfoot",
        "legend", "option", "label"}
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
_SPACE = re.compile(r"[ \t\n\r\f\v\u200b]+")


class HtmlText(HTMLParser):
    """Feed HTML, then read .text, .headings [(offset, level, title)], .anchors {id: offset}, .title."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._len = 0
        self._tail = ""
        self._skip: list[str] = []  # stack of tags whose content is hidden
        self._pre = 0
        self._cells: list[int] = []  # cells seen in the current row, per open table
        self._heading: tuple[str, int, int] | None = None  # (tag, level, offset)
        self._heading_text: list[str] = []
        self._in_title = False
        self.title = ""
        self.headings: list[tuple[int, int, str]] = []
        self.anchors: dict[str, int] = {}

    # -- output -------------------------------------------------------------------------------------
    def _write(self, s: str) -> None:
        if s:
            self._out.append(s)
            self._len += len(s)
            self._tail = (self._tail + s)[-3:]

    def _break(self, newlines: int) -> None:
        if not self._len:
            return
        self._rstrip_spaces()
        have = len(self._tail) - len(self._tail.rstrip("\n"))
        if have < newlines:
            self._write("\n" * (newlines - have))

    def _rstrip_spaces(self) -> None:
        while self._out and self._out[-1].endswith(" ") and not self._pre:
            last = self._out.pop()
            stripped = last.rstrip(" ")
            self._len -= len(last) - len(stripped)
            if stripped:
                self._out.append(stripped)
            self._tail = "".join(self._out[-3:])[-3:]
            if stripped:
                break

    @property
    def text(self) -> str:
        return "".join(self._out).rstrip()

    # -- parser callbacks ---------------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "title" and (not self._skip or self._skip == ["head"]):
            self._in_title = True
            return
        if self._skip:
            if tag == self._skip[-1] and tag not in VOID:
                self._skip.append(tag)
            elif tag == "body" and self._skip == ["head"]:
                self._skip.clear()  # a missing </head>
            return
        hidden = "hidden" in a or _HIDDEN_STYLE.search(a.get("style") or "")
        if tag in SKIP or hidden:
            if tag not in VOID:
                self._skip.append(tag)
            return
        for key in ("id", "name"):
            if a.get(key) and a[key] not in self.anchors:
                self.anchors[a[key]] = self._len
        if tag in HEADINGS:
            self._close_heading()
            self._break(2)
            self._heading = (tag, HEADINGS[tag], self._len)
        elif tag in PARAGRAPH:
            self._break(2)
        elif tag in LINE:
            self._break(1)
        if tag == "pre":
            self._pre += 1
        elif tag == "br":
            self._rstrip_spaces()
            self._write("\n")
        elif tag == "li":
            self._write("- ")
        elif tag == "table":
            self._cells.append(0)
        elif tag == "tr" and self._cells:
            self._cells[-1] = 0
        elif tag in ("td", "th"):
            if self._cells and self._cells[-1]:
                self._rstrip_spaces()
                self._write(" | ")
            if self._cells:
                self._cells[-1] += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._in_title:
            self._in_title = False
            return
        if self._skip:
            if tag == self._skip[-1]:
                self._skip.pop()
            return
        if tag == "pre" and self._pre:
            self._pre -= 1
        if tag == "table" and self._cells:
            self._cells.pop()
        if self._heading and tag == self._heading[0]:
            self._close_heading()
            self._break(2)
        elif tag in PARAGRAPH or tag in HEADINGS:
            self._break(2)
        elif tag in LINE:
            self._break(1)

    def _close_heading(self) -> None:
        if self._heading:
            _, level, start = self._heading
            title = _SPACE.sub(" ", "".join(self._heading_text)).strip()
            self._heading_text = []
            if title:
                self.headings.append((start, level, title))
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
            return
        if self._skip or not data:
            return
        if self._pre:
            if self._heading:
                self._heading_text.append(data)
            self._write(data)
            return
        text = _SPACE.sub(" ", data)
        if self._heading:
            self._heading_text.append(data)
        if not self._len or self._tail.endswith("\n") or self._tail.endswith(" "):
            text = text.lstrip(" ")
        self._write(text)

    def close(self) -> None:
        super().close()
        self._close_heading()
        self.title = _SPACE.sub(" ", self.title).strip()


def extract(html: str) -> HtmlText:
    parser = HtmlText()
    parser.feed(html)
    parser.close()
    return parser
