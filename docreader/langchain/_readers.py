"""What the chat model and the tools share: one Reader per model/knobs (so the document's KV cache is
reused across calls), one lock around generation, loaded documents, and a system-prompt override.

`Reader` is not thread-safe (one model, one prefix cache, DSA recording state), and LangChain runs
`batch` and async calls in worker threads, so every generation goes through `GENERATION_LOCK`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from ..document import Document
from ..engine import Reader
from ..errors import DocreaderError
from ..loaders import load as load_document
from ..prompt import SENTINEL, Prompt, template, tokenize_document

GENERATION_LOCK = threading.RLock()
_READERS: dict[tuple, "LCReader"] = {}
_DOCS: OrderedDict[tuple, Document] = OrderedDict()
_DOCS_MAX = 8
_POOL_LOCK = threading.Lock()


class LCReader(Reader):
    """A Reader whose system prompt can be replaced by the caller's SystemMessage for one question."""

    system: str | None = None

    def prompt(self, document, question, history=None, max_new_tokens=256) -> Prompt:
        if self.system is None:
            return super().prompt(document, question, history, max_new_tokens)
        lm = self.lm
        doc_tokens = getattr(document, "_tokens", None)
        if doc_tokens is None or doc_tokens[0] != lm.name:
            doc_tokens = (lm.name, tokenize_document(lm.tokenizer, document.text))
            document._tokens = doc_tokens
        return build_with_system(lm.tokenizer, document, question, history or [], self.system,
                                 lm.context_window, max_new_tokens, doc_tokens[1])


def build_with_system(tokenizer, document: Document, question: str, history: list, system: str,
                      window: int, max_new_tokens: int, doc_tokens: tuple) -> Prompt:
    """docreader.prompt.build with `system` in place of prompts/system.txt (same templates otherwise)."""
    ids, offsets = doc_tokens
    name = Path(document.path).name
    for dropped in range(len(history) + 1):
        turns = [*history[dropped:], (question, None)]
        msgs = [{"role": "system", "content": system}]
        for i, (q, a) in enumerate(turns):
            content = (template("ask").format(document_name=name, document=SENTINEL, question=q) if i == 0
                       else template("followup").format(question=q))
            msgs.append({"role": "user", "content": content})
            if a is not None:
                msgs.append({"role": "assistant", "content": a})
        rendered = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        pre, post = rendered.split(SENTINEL)
        pre_ids = tokenizer(pre, add_special_tokens=False)["input_ids"]
        post_ids = tokenizer(post, add_special_tokens=False)["input_ids"]
        if len(pre_ids) + len(ids) + len(post_ids) + max_new_tokens <= window:
            return Prompt(pre_ids + ids + post_ids, len(pre_ids), offsets, dropped, len(history) - dropped)
    raise DocreaderError(f"too long for the model: the document is {len(ids):,} tokens; with {max_new_tokens} "
                         f"new tokens the prompt exceeds the {window:,}-token window (no silent truncation)",
                         path=document.path)


def reader_for(model: str | None, overrides: dict | None = None, db_path: str | None = None) -> LCReader:
    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    key = (model or None, tuple(sorted(ov.items())), str(db_path) if db_path else None)
    with _POOL_LOCK:
        if key not in _READERS:
            _READERS[key] = LCReader(model, ov, db_path)
        return _READERS[key]


def document_for(path: str | os.PathLike, format: str | None = None, password: str | None = None) -> Document:
    """Load a document once per (path, size, mtime, format); later calls reuse it (and its tokens)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as e:
        raise DocreaderError(f"cannot read the document ({e.strerror or e})", path=str(path)) from None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, format)
    with _POOL_LOCK:
        doc = _DOCS.get(key)
        if doc is not None:
            _DOCS.move_to_end(key)
            return doc
    doc = load_document(str(p), format=format, password=password)
    with _POOL_LOCK:
        _DOCS[key] = doc
        while len(_DOCS) > _DOCS_MAX:
            _DOCS.popitem(last=False)
    return doc
