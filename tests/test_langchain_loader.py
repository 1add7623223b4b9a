"""DocreaderLoader yields one whole Document per file, for every format, with provenance metadata."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from types import GeneratorType

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402

from docreader.langchain import DocreaderLoader  # noqa: E402
from docreader.loaders import load  # noqa: E402

MAKERS = {
    "pdf": (lambda p: corpus.make_pdf(p, corpus.page_texts(3)), "a.pdf", {"pages": 3}),
    "docx": (corpus.make_docx, "a.docx", {}),
    "txt": (lambda p: (p.write_text(corpus.ACCENTED, encoding="utf-8"), p)[1], "a.txt", {}),
    "md": (lambda p: (p.write_text("# Title\n\nSome text.\n\n## Part\n\nMore.\n"), p)[1], "a.md", {}),
    "html": (corpus.make_html, "a.html", {}),
    "epub": (corpus.make_epub, "a.epub", {}),
    "chat-json": (corpus.make_chat_json, "chat.json", {"messages": 5}),
    "chat-irc": (corpus.make_irc, "irc.log", {}),
    "chat-whatsapp": (corpus.make_whatsapp, "wa.txt", {"messages": 4}),
}


@pytest.mark.parametrize("name", MAKERS)
def test_every_format_loads_whole_with_metadata(tmp_path, name):
    make, filename, counts = MAKERS[name]
    path = make(tmp_path / filename)
    docs = list(DocreaderLoader(path).lazy_load())
    ref = load(path)
    assert len(docs) == 1  # the whole document, never chunks
    d = docs[0]
    assert d.page_content == ref.text and d.page_content.strip()
    m = d.metadata
    assert (m["source"], m["format"], m["kind"], m["sha256"], m["chars"]) == (
        str(path), ref.format, ref.kind, ref.sha256, len(ref.text))
    for key, n in counts.items():
        assert m[key] == n
    plural = {"page": "pages", "section": "sections", "message": "messages"}
    regions = {plural[k]: n for k, n in Counter(r.kind for r in ref.regions).items()}
    assert {k: m[k] for k in plural.values() if k in m} == regions


def test_lazy_many_files_and_regions(tmp_path):
    pdf = corpus.make_pdf(tmp_path / "a.pdf", corpus.page_texts(2), roman_front=1)
    irc = corpus.make_irc(tmp_path / "b.log")
    loader = DocreaderLoader([pdf, irc], regions=True)
    it = loader.lazy_load()
    assert isinstance(it, GeneratorType)
    first = next(it)
    labels = [r["label"] for r in first.metadata["regions"]]
    assert labels[:2] == ["p. i", "p. 1"] and first.metadata["pages"] == 2
    r = first.metadata["regions"][1]
    assert first.page_content[r["start"]:r["end"]].startswith("Page 2 heading")
    second = next(it)
    assert second.metadata["format"] == "chat" and "alice" in second.page_content
    assert [d.metadata["source"] for d in loader.load()] == [str(pdf), str(irc)]


def test_encrypted_pdf_needs_the_password(tmp_path):
    from docreader.errors import DocreaderError
    pdf = corpus.make_pdf(tmp_path / "s.pdf", corpus.page_texts(1), password="pw")
    with pytest.raises(DocreaderError):
        DocreaderLoader(pdf).load()
    assert "Page 1 heading" in DocreaderLoader(pdf, password="pw").load()[0].page_content
