"""`DocreaderLoader`: every format docreader reads, as whole LangChain Documents (never chunks)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document as LCDocument

from ..loaders import load

_PLURAL = {"page": "pages", "section": "sections", "message": "messages"}


class DocreaderLoader(BaseLoader):
    """One LangChain Document per file: the exact text the model reads, with metadata.

    metadata: source, format, kind, sha256 (content hash of the text), chars, pages/sections/messages
    (counts of those regions), the loader's own fields (title, encoding, chat source...), and with
    `regions=True` the full region list (start/end offsets, label, page/speaker...)."""

    def __init__(self, file_path: str | os.PathLike | Sequence[str | os.PathLike], format: str | None = None,
                 password: str | None = None, regions: bool = False):
        paths = [file_path] if isinstance(file_path, (str, os.PathLike)) else list(file_path)
        self.file_paths = [str(Path(p)) for p in paths]
        self.format, self.password, self.regions = format, password, regions

    def lazy_load(self) -> Iterator[LCDocument]:
        for path in self.file_paths:
            doc = load(path, format=self.format, password=self.password)
            meta = {k: v for k, v in doc.meta.items() if isinstance(v, (str, int, float, bool))}
            meta |= {"source": path, "format": doc.format, "kind": doc.kind, "sha256": doc.sha256,
                     "chars": len(doc.text)}
            meta |= {_PLURAL.get(k, k + "s"): n for k, n in Counter(r.kind for r in doc.regions).items()}
            if self.regions:
                meta["regions"] = [asdict(r) for r in doc.regions]
            yield LCDocument(page_content=doc.text, metadata=meta)
