"""Format detection from content (magic bytes, zip members, markup, line patterns); the extension only breaks ties."""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from docreader.errors import DocreaderError
from docreader.loaders import chat_irc, chat_whatsapp
from docreader.loaders.budget import Budget
from docreader.loaders.chat_json import looks_like_chat
from docreader.loaders.encoding import BINARY, declared_charset, decode_text
from docreader.loaders.markdown import count_headings

SUPPORTED_FORMATS = ("pdf", "txt", "md", "html", "epub", "docx", "chat")
MD_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
_MAGIC = [  # formats we recognise only to name them in the error
    (b"\x89PNG", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"GIF8", "GIF image"),
    (b"\x1f\x8b", "gzip archive"), (b"7z\xbc\xaf", "7z archive"), (b"Rar!", "RAR archive"),
    (b"\x7fELF", "executable"), (b"MZ", "Windows executable"), (b"BZh", "bzip2 archive"),
    (b"\xfd7zXZ", "xz archive"), (b"SQLite format 3", "SQLite database"),
    (b"\xd0\xcf\x11\xe0", "legacy Office file (.doc/.xls) — save it as DOCX or PDF"),
    (b"{\\rtf", "RTF document — save it as DOCX, PDF or text"),
]
_HTML_ROOT = re.compile(r"<(!doctype\s+html|html|head|body)\b", re.I)
_HTML_TAG = re.compile(r"</?(p|div|span|br|h[1-6]|table|a|ul|li|body|html|section|article)\b[^>]*>", re.I)


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def starts_like_html(text: str) -> bool:
    """An XML declaration and comments, then <!DOCTYPE html>, <html>, <head> or <body>.

    Scanned with str.find, not one regex: `(<!--.*?-->\\s*)*` backtracks exponentially on "<!---->" × 40 + "x".
    """
    i = _skip_space(text, 0)
    if text.startswith("<?xml", i):
        i = text.find(">", i) + 1
        if not i:
            return False
    while text.startswith("<!--", i := _skip_space(text, i)):
        i = text.find("-->", i + 4) + 3
        if i < 3:
            return False
    return _HTML_ROOT.match(text, i) is not None


@dataclass
class Sniffed:
    """The detected format, with the decoded text when detection had to decode it anyway."""

    format: str
    text: str | None = None
    encoding: str | None = None


def _zip_format(data: bytes, path: str, suffix: str) -> str:
    try:
        names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        names = set()
    head = data[:200]
    if "word/document.xml" in names:
        return "docx"
    if "META-INF/container.xml" in names or b"mimetypeapplication/epub+zip" in head:
        return "epub"
    if not names:  # damaged central directory: go by what the local headers or the name say
        if suffix in (".docx", ".epub"):
            return suffix[1:]
        if b"word/" in data[:65536]:
            return "docx"
        raise DocreaderError("not a supported document (corrupt zip archive)", path=path)
    if suffix in (".docx", ".epub"):
        return suffix[1:]  # the loader will say what is missing
    raise DocreaderError("not a supported document (zip archive, not DOCX or EPUB)", path=path)


def _chat_lines(text: str) -> bool:
    lines = [ln for ln in text[:100_000].split("\n")[:400] if ln.strip()][:200]
    if len(lines) < 2:
        return False
    hits = sum(1 for ln in lines if chat_irc.is_irc_line(ln) or chat_whatsapp.header(ln))
    return hits >= min(3, len(lines)) and hits / len(lines) >= 0.5


def _json_chat(text: str) -> bool:
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        return False
    try:
        return looks_like_chat(json.loads(stripped))
    except (ValueError, RecursionError):
        return False


def sniff(data: bytes, path: str, suffix: str = "", budget: Budget | None = None) -> Sniffed:
    """Detect the format of `data`; raise DocreaderError for binary data we cannot read.

    With a `budget`, text too large for the model window is refused before it is decoded."""
    suffix = suffix.lower()
    if b"%PDF-" in data[:1024]:
        return Sniffed("pdf")
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return Sniffed(_zip_format(data, path, suffix))
    for magic, what in _MAGIC:
        if data.startswith(magic):
            raise DocreaderError(f"not a supported document ({what})", path=path)
    if budget is not None:
        budget.check_text_bytes(len(data))
    text, encoding = decode_text(data, path, declared_charset(data))
    if starts_like_html(text[:4096]) or (suffix in HTML_SUFFIXES and _HTML_TAG.search(text[:65536])):
        return Sniffed("html", text, encoding)
    if _json_chat(text):
        return Sniffed("chat", text, encoding)
    if _chat_lines(text):
        return Sniffed("chat", text, encoding)
    if suffix in MD_SUFFIXES or count_headings(text) >= 2:
        return Sniffed("md", text, encoding)
    return Sniffed("txt", text, encoding)


def detect_format(path: str | Path, data: bytes | None = None) -> str:
    """The format `load` would use for this file ("pdf", "docx", "chat", …), judged by content."""
    from docreader.loaders.limits import read_input, resolve_max_bytes

    p = Path(path)
    if data is None:
        data = read_input(p, resolve_max_bytes(None))
    return sniff(data, str(p), p.suffix).format


__all__ = ["SUPPORTED_FORMATS", "Sniffed", "sniff", "detect_format", "BINARY"]
