"""Parsed documents kept between commands: a PDF's, DOCX's or EPUB's text and page/section map, keyed by its bytes.

Why: the second `ask` on a contract takes its read of the document from the document cache, but still parsed
the PDF again first, 0.8 s of a served ~3.2 s answer on a 2-core EPYC (bench/RESULTS-cache.md). Parsing is a
pure function of the file's bytes, the format, the limits and the loader code, so those are the key;
text formats are not kept (decoding them costs milliseconds).

- One JSON file per document under $DOCREADER_HOME/cache/parsed/, written to a temporary file and renamed; an
  entry whose key or shape does not match is ignored and parsed again, never trusted.
- Not kept: a PDF read with a password or carrying an encryption dictionary (its plain text must not land on
  disk because of a cache), and a document whose loader warned (undecodable pages): the warning must repeat.
- Bounded to the MAX_ENTRIES most recently used; `docreader cache clear` and `--no-cache` cover it too.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from docreader.document import Document, Region
from docreader.home import home, write_atomically

FORMATS = ("pdf", "docx", "epub")
FORMAT = 1
MAX_ENTRIES = 512
_LIBS = ("pypdf",)  # DOCX and EPUB are read with the standard library


def parsed_dir() -> Path:
    return home() / "cache" / "parsed"


@lru_cache(maxsize=1)
def code_stamp() -> str:
    """The loaders' source and the parsing libraries' versions: a changed loader never serves an old parse."""
    h = hashlib.sha256()
    for p in sorted(Path(__file__).parent.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update(Path(__file__).parent.parent.joinpath("document.py").read_bytes())
    for lib in _LIBS:
        try:
            h.update(f"{lib}={metadata.version(lib)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=-".encode())
    return h.hexdigest()


def key(data: bytes, fmt: str, max_tokens: int, max_bytes: int) -> str:
    """The limits are in it: a file parsed under a larger window or byte limit may be refused under a smaller."""
    parts = [hashlib.sha256(data).hexdigest(), fmt, str(max_tokens), str(max_bytes), code_stamp(), str(FORMAT)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


def keepable(fmt: str, data: bytes, password: str | None) -> bool:
    return fmt in FORMATS and password is None and not (fmt == "pdf" and b"/Encrypt" in data)


def get(k: str, path: str) -> Document | None:
    """The document parsed under key `k`, named `path` (the same bytes under another name are the same text)."""
    f = parsed_dir() / f"{k}.json"
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
        if raw.get("key") != k:
            return None
        regions = [Region(r["start"], r["end"], r["kind"], r["index"], r["label"], r.get("meta") or {})
                   for r in raw["regions"]]
        doc = Document(path=path, format=raw["format"], text=raw["text"], regions=regions, meta=raw["meta"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.utime(f)  # least recently used goes first
    except OSError:
        pass
    return doc


def put(k: str, doc: Document) -> None:
    """Keep `doc` under key `k`; a cache dir that cannot take it costs nothing (the next load parses again)."""
    if doc.meta.get("undecodable_pages"):
        return
    body = {"key": k, "format": doc.format, "text": doc.text, "meta": doc.meta,
            "regions": [{"start": r.start, "end": r.end, "kind": r.kind, "index": r.index, "label": r.label,
                         "meta": r.meta} for r in doc.regions]}

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(body, out, ensure_ascii=False, separators=(",", ":"))
    try:
        write_atomically(parsed_dir() / f"{k}.json", write)
        evict(MAX_ENTRIES)
    except (OSError, TypeError, ValueError):
        pass


def evict(keep: int) -> int:
    """Delete all but the `keep` most recently used entries; -> how many were deleted."""
    d = parsed_dir()
    files = []
    for p in d.glob("*.json") if d.exists() else []:
        try:
            files.append((p.stat().st_mtime, p))
        except OSError:
            continue
    gone = 0
    for _, p in sorted(files, reverse=True)[keep:]:
        try:
            p.unlink()
            gone += 1
        except OSError:
            pass
    return gone
