"""What the chat model and the tools share: one Reader per model/knobs (so the document's KV cache is
reused across calls), one lock around generation, loaded documents, a system-prompt override, and the
root directory that agents' paths must stay inside.

`Reader` is not thread-safe (one model, one prefix cache, DSA recording state), and LangChain runs
`batch` and async calls in worker threads, so every generation goes through `GENERATION_LOCK`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from ..document import Document
from ..engine import Reader
from ..errors import DocreaderError
from ..loaders import load as load_document
from .file_blocks import InlineFile, load_inline

GENERATION_LOCK = threading.RLock()
_READERS: dict[tuple, "LCReader"] = {}
_DOCS: OrderedDict[tuple, Document] = OrderedDict()
_DOCS_MAX = 8
_POOL_LOCK = threading.Lock()


class LCReader(Reader):
    """A Reader whose system prompt the caller's SystemMessage may replace for one question
    (`Reader.system`)."""


def reader_for(model: str | None, overrides: dict | None = None, db_path: str | None = None) -> LCReader:
    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    key = (model or None, tuple(sorted(ov.items())), str(db_path) if db_path else None)
    with _POOL_LOCK:
        if key not in _READERS:
            _READERS[key] = LCReader(model, ov, db_path)
        return _READERS[key]


def allowed_path(path: str | os.PathLike, root_dir: str | os.PathLike | None) -> Path:
    """`path` with symlinks resolved (a relative one taken from the root), if it lies inside `root_dir`
    (None: the current working directory); else a DocreaderError. Paths come from a model's tool calls
    or message content, i.e. from text anyone could have written: `/etc/passwd` must not be read."""
    root = Path(Path.cwd() if root_dir is None else root_dir).expanduser().resolve()
    resolved = (root / Path(path).expanduser()).resolve()
    if not resolved.is_relative_to(root):
        raise DocreaderError(f"outside the allowed directory {root} (set root_dir to allow it)", path=str(path))
    return resolved


def document_for(path: str | os.PathLike, format: str | None = None, password: str | None = None,
                 root_dir: str | os.PathLike | None = None) -> Document:
    """Load a document inside `root_dir` (see allowed_path) once per (path, size, mtime, format); later calls
    reuse it (and its tokens)."""
    p = allowed_path(path, root_dir)
    try:
        st = p.stat()
    except OSError as e:
        raise DocreaderError(f"cannot read the document ({e.strerror or e})", path=str(path)) from None
    return _cached((str(p), st.st_size, st.st_mtime_ns, format),
                   lambda: load_document(str(p), format=format, password=password))


def inline_document(f: InlineFile, password: str | None = None) -> Document:
    """A document sent as bytes in a message (see file_blocks), loaded once per content and name."""
    return _cached(("inline", f.sha256, f.name), lambda: load_inline(f, password))


def _cached(key: tuple, load: Callable[[], Document]) -> Document:
    with _POOL_LOCK:
        doc = _DOCS.get(key)
        if doc is not None:
            _DOCS.move_to_end(key)
            return doc
    doc = load()
    with _POOL_LOCK:
        _DOCS[key] = doc
        while len(_DOCS) > _DOCS_MAX:
            _DOCS.popitem(last=False)
    return doc
