"""Turn a file into a `Document`: detect its format from content, read it safely, map text back to pages,
sections and messages.

    from docreader.loaders import load, detect_format, SUPPORTED_FORMATS
    doc = load("contract.pdf")
"""

from __future__ import annotations

import json
from pathlib import Path

from docreader.document import Document
from docreader.errors import DocreaderError
from docreader.loaders import parsed
from docreader.loaders.budget import Budget
from docreader.loaders.limits import STDIN, STDIN_NAME, UNZIP_FACTOR, read_input, read_stdin, resolve_max_bytes
from docreader.loaders.sniff import SUPPORTED_FORMATS, Sniffed, detect_format, sniff

__all__ = ["load", "detect_format", "SUPPORTED_FORMATS"]

_ALIASES = {"markdown": "md", "text": "txt", "htm": "html", "irc": "chat", "whatsapp": "chat", "json": "chat"}


def _load_chat(path: str, text: str, encoding: str, budget: Budget) -> Document:
    from docreader.loaders.chat import render_chat
    from docreader.loaders.chat_irc import is_irc_line, parse_irc
    from docreader.loaders.chat_json import parse_json_chat
    from docreader.loaders.chat_whatsapp import header, parse_whatsapp

    messages, source = [], ""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):  # IRC lines start with "[" too: JSON only if it parses
        try:
            messages, source = parse_json_chat(json.loads(stripped)), "json"
        except RecursionError:
            raise DocreaderError("JSON chat export nested too deeply to read (valid JSON, but no chat export "
                                 "nests this deep)", path=path) from None
        except ValueError as e:
            if stripped.startswith("{"):
                raise DocreaderError(f"invalid JSON chat export ({e})", path=path) from None
    if not source:
        lines = [ln for ln in text.split("\n")[:400] if ln.strip()]
        whatsapp = sum(1 for ln in lines if header(ln))
        irc = sum(1 for ln in lines if is_irc_line(ln))
        if whatsapp > irc:
            messages, source = parse_whatsapp(text), "whatsapp"
        else:
            messages, source = parse_irc(text), "irc"
    if not messages:
        raise DocreaderError("no chat messages found", path=path)
    return render_chat(path, messages, {"source": source, "encoding": encoding}, budget)


def _load_text_format(fmt: str, path: str, data: bytes, sniffed: Sniffed, budget: Budget) -> Document:
    from docreader.loaders.encoding import declared_charset, decode_text

    if sniffed.text is not None:
        text, encoding = sniffed.text, sniffed.encoding or "utf-8"
    else:  # an explicit format=: decode without sniffing
        budget.check_text_bytes(len(data))
        text, encoding = decode_text(data, path, declared_charset(data))
    if fmt == "html":
        from docreader.loaders.html_page import load_html
        return load_html(path, text, encoding, budget)
    if fmt == "chat":
        return _load_chat(path, text, encoding, budget)
    budget.add(len(text))  # plain text and Markdown are read as they are
    if fmt == "md":
        from docreader.loaders.markdown import load_markdown
        return load_markdown(path, text, encoding)
    from docreader.loaders.plaintext import load_text
    return load_text(path, text, encoding)


def load(path: str | Path, format: str | None = None, password: str | None = None,
         max_bytes: int | None = None, max_tokens: int | None = None, cache: bool = False) -> Document:
    """Read any supported document; every failure is a one-line DocreaderError naming the file.

    Limits: `max_bytes` read, and a `Budget` of wall time and of output text: no more than a window of
    `max_tokens` (default $DOCREADER_MAX_TOKENS, else 262,144) could hold. `path` "-" reads standard input
    (the document is then named "<stdin>"). `cache` (the CLI's default): take a PDF/DOCX/EPUB parsed before
    from $DOCREADER_HOME/cache/parsed, and keep this one there (`docreader.loaders.parsed`)."""
    stdin = str(path) == STDIN
    p = Path(STDIN_NAME if stdin else path)
    where = str(p)
    limit = resolve_max_bytes(max_bytes)
    budget = Budget.from_env(where, max_tokens)
    fmt = _ALIASES.get(format.lower(), format.lower()) if format else None
    if fmt is not None and fmt not in SUPPORTED_FORMATS:
        raise DocreaderError(f"unknown format {format!r} (choose from {', '.join(SUPPORTED_FORMATS)})", path=where)
    data = read_stdin(limit) if stdin else read_input(p, limit)
    sniffed = sniff(data, where, "" if stdin else p.suffix, budget) if fmt is None else Sniffed(fmt)  # a given format is not sniffed
    fmt = fmt or sniffed.format
    k = parsed.key(data, fmt, budget.max_tokens, limit) if cache and parsed.keepable(fmt, data, password) else None
    doc = parsed.get(k, where) if k else None
    if doc is None:
        doc = _parse(fmt, where, data, password, limit, sniffed, budget)
        if k:
            parsed.put(k, doc)
    doc.meta.setdefault("bytes", len(data))
    if format is None:
        doc.meta.setdefault("detected_format", sniffed.format)
    return doc


def _parse(fmt: str, where: str, data: bytes, password: str | None, limit: int, sniffed: Sniffed,
           budget: Budget) -> Document:
    if fmt == "pdf":
        from docreader.loaders.pdf import load_pdf
        doc = load_pdf(where, data, password, budget)
    elif fmt == "docx":
        from docreader.loaders.docx import load_docx
        doc = load_docx(where, data, UNZIP_FACTOR * limit, budget)
    elif fmt == "epub":
        from docreader.loaders.epub import load_epub
        doc = load_epub(where, data, UNZIP_FACTOR * limit, budget)
    else:
        doc = _load_text_format(fmt, where, data, sniffed, budget)
    if not doc.text.strip():
        raise DocreaderError("empty document", path=where)
    return doc
