"""How many bytes of content stream pypdf would parse to extract each page's text, known before parsing any.

pypdf parses content in pure Python (about 0.3 MB/s): one page drawing a form XObject 5,000 times, or
pages that all share one 70 MB content stream, would run for hours, and nothing can interrupt pypdf
mid-page. So the work is estimated first, mirroring what `extract_text` parses: a page's content
streams, plus the form drawn by each `/Name Do`, recursively; streams without a text-showing or `Do`
operator are skipped, as pypdf skips them. A page or document over its limit is refused.
"""

from __future__ import annotations

import re

from docreader.errors import DocreaderError
from docreader.loaders.limits import human_size

MAX_PAGE_WORK = 4_000_000  # a dense page of text is ~10 kB of content; 4 MB takes pypdf ~15 s
MAX_PDF_WORK = 32_000_000  # a 1,000-page book is ~10 MB
MAX_FORM_DEPTH = 32
_TEXT_OPERATOR = re.compile(rb"T[jJ]|Do|['\"]")  # what pypdf looks for before parsing a stream
_DO = re.compile(rb"/([^\s/\[\]()<>{}%]+)\s*Do\b")


class _TooMuch(Exception):
    """A page needs more work than MAX_PAGE_WORK (raised from deep inside the form recursion)."""


class PageWork:
    """Work estimates per page; each distinct stream is decoded and scanned once (memo by object identity)."""

    def __init__(self) -> None:
        self._done: dict[tuple[int, int], tuple[int, bool]] = {}  # (stream, resources) -> (work, decoded)
        self._open: set[int] = set()  # forms being estimated: a cycle, which pypdf skips

    def _stream(self, stream, resources, depth: int) -> tuple[int, bool]:
        """(work, decoded cleanly) of one content stream or form; decoded is False for data that would not decode."""
        key = (id(stream), id(resources))
        if key in self._done:
            return self._done[key]
        if id(stream) in self._open:
            return 0, True
        if depth > MAX_FORM_DEPTH:
            raise _TooMuch
        raw = getattr(stream, "_data", b"") or b""
        try:
            data = stream.get_data() or b""
        except Exception:  # pypdf raises many types for broken filters
            data = b""
        clean = bool(data) or not raw or "/Filter" not in stream
        self._open.add(id(stream))
        try:
            work = self._work(data, resources, depth)
        finally:
            self._open.discard(id(stream))
        self._done[key] = (work, clean)
        return work, clean

    def _work(self, data: bytes, resources, depth: int) -> int:
        if not _TEXT_OPERATOR.search(data):
            return 0
        work = len(data)
        xobjects = _get(resources, "/XObject")
        for m in _DO.finditer(data) if xobjects else ():
            form = _get(xobjects, "/" + m.group(1).decode("latin-1"))
            if form is not None and _get(form, "/Subtype") == "/Form":
                work += self._stream(form, _get(form, "/Resources") or resources, depth + 1)[0]
            if work > MAX_PAGE_WORK:
                raise _TooMuch
        return work

    def page(self, page) -> tuple[int, bool]:
        """(bytes of content to parse, whether every content stream decoded); MAX_PAGE_WORK + 1 when over."""
        contents = _get(page, "/Contents")
        streams = list(contents) if isinstance(contents, list) else [contents] if contents is not None else []
        resources, work, clean = _get(page, "/Resources"), 0, True
        try:
            for ref in streams:
                stream_work, ok = self._stream(ref.get_object() if hasattr(ref, "get_object") else ref, resources, 0)
                work, clean = work + stream_work, clean and ok
        except _TooMuch:
            return MAX_PAGE_WORK + 1, clean
        return work, clean


def _get(obj, key: str):
    """obj[key] resolved, or None (for missing keys, non-dictionaries and broken references)."""
    try:
        value = obj.get(key) if hasattr(obj, "get") else None
        return value.get_object() if hasattr(value, "get_object") else value
    except Exception:
        return None


def check_work(reader, path: str) -> list[int]:
    """Refuse a PDF whose text extraction would take too long; return the 0-based pages that cannot be decoded."""
    estimate, total, undecodable = PageWork(), 0, []
    for i, page in enumerate(reader.pages):
        work, clean = estimate.page(page)
        if not clean:
            undecodable.append(i)
        if work > MAX_PAGE_WORK:
            raise DocreaderError(f"page {i + 1} has over {human_size(MAX_PAGE_WORK, limit=True)} of drawing "
                                 "instructions to parse for its text, the per-page limit (one form or stream drawn "
                                 "over and over?)", path=path)
        total += work
        if total > MAX_PDF_WORK:
            raise DocreaderError(f"pages 1–{i + 1} have over {human_size(MAX_PDF_WORK, limit=True)} of drawing "
                                 "instructions to parse for their text, the limit for one PDF", path=path)
    return undecodable
