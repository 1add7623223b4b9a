"""Which document a message names: LangChain `file` content blocks, in every form a caller may send.

- a local file: `{"type": "file", "url": "file:///PATH"}` or `{"type": "file", "path": PATH}` (read only inside
  the model's root directory, like a `document=` path);
- inline data, the standard v1 block `{"type": "file", "base64": ..., "mime_type": ...}` and a `data:` URL.
  The older `{"type": "file", "source_type": "base64", "data": ...}` and OpenAI's `{"type": "file", "file":
  {"file_data": ...}}` arrive as v1 blocks: BaseChatModel normalises every message before `_generate`
  (tests/test_langchain_standards.py sends both forms through invoke()).

Inline data is loaded like a file: the loaders take a path, so the bytes go to a private temporary file
that is deleted once read; the document is then named `<inline NAME>` (NAME: the block's filename, else
`inline-SHA12.EXT`) in answers, citations and the log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..document import Document
from ..errors import DocreaderError
from ..loaders import load as load_document
from ..loaders.limits import human_size, resolve_max_bytes

SUFFIXES = {  # MIME type -> the extension the loaders' format sniffing takes as a tie-breaker
    "application/pdf": ".pdf", "text/plain": ".txt", "text/markdown": ".md", "text/x-markdown": ".md",
    "text/html": ".html", "application/xhtml+xml": ".html", "application/epub+zip": ".epub",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/json": ".json",
}
_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?:;[^,]*)?;base64,(?P<data>.*)$", re.S)


@dataclass(frozen=True)
class InlineFile:
    """A document sent as bytes in a message rather than named by path."""

    data: bytes
    mime_type: str | None
    filename: str | None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def name(self) -> str:
        """`<inline contract.pdf>`: never a path on disk, so no one reads it as one."""
        base = Path(self.filename or "").name or f"inline-{self.sha256[:12]}{SUFFIXES.get(self.mime_type or '', '')}"
        return f"<inline {base}>"


def _decode(data: str, filename: str | None) -> bytes:
    limit = resolve_max_bytes(None)
    where = f"<inline {filename}>" if filename else "<inline>"
    if len(data) * 3 // 4 > limit:  # checked before decoding: nothing huge is ever held twice
        raise DocreaderError(f"file block is over the {human_size(limit, limit=True)} limit", path=where)
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"ChatDocreader: the file block's base64 data for {where} is not valid base64") from None


def file_ref(block: dict) -> str | InlineFile:
    """The document a `type: file` block names: a path (str) or the inline bytes."""
    extras = block.get("extras") if isinstance(block.get("extras"), dict) else {}
    filename = block.get("filename") or extras.get("filename") or block.get("name")
    mime = block.get("mime_type")
    if isinstance(block.get("base64"), str):
        return InlineFile(_decode(block["base64"], filename), mime, filename)
    ref = block.get("path") or block.get("url")
    if not ref:
        raise ValueError("ChatDocreader reads local files and inline data: give a file block 'base64' and "
                         "'mime_type', a 'url' (file:// or data:) or a 'path' (not a provider's file_id)")
    if (m := _DATA_URL.match(ref)) is not None:
        return InlineFile(_decode(m["data"], filename), m["mime"] or mime, filename)
    u = urlparse(ref)
    if u.scheme not in ("", "file") and len(u.scheme) > 1:  # (one letter: a Windows drive)
        raise ValueError(f"ChatDocreader reads local files only, not {u.scheme}: URLs")
    return unquote(u.path) if u.scheme == "file" else ref


def load_inline(f: InlineFile, password: str | None = None) -> Document:
    """Load inline bytes with the ordinary loaders (format sniffed from the content, the MIME type's extension
    breaking ties); errors name the document as `<inline NAME>`, never the temporary file."""
    name = f.name
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name[len("<inline "):-1]) or "document"
    with tempfile.TemporaryDirectory(prefix="docreader-inline-") as tmp:
        path = Path(tmp) / safe
        path.write_bytes(f.data)
        try:
            doc = load_document(str(path), password=password)
        except DocreaderError as e:
            raise DocreaderError(str(e).removeprefix(f"{e.path}: "), path=name) from None
    doc.path = name
    return doc
