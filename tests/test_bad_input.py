"""Every kind of bad input fails with one DocreaderError naming the file and the reason — never a traceback."""

from __future__ import annotations

import io
import re
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402

from docreader.errors import DocreaderError  # noqa: E402
from docreader.loaders import detect_format, load  # noqa: E402
from docreader.loaders.limits import human_size  # noqa: E402


def expect_error(path: Path, reason: str, **kw) -> DocreaderError:
    with pytest.raises(DocreaderError, match=re.escape(reason)) as info:
        load(path, **kw)
    message = str(info.value)
    assert str(path) in message and info.value.path == str(path)
    assert "\n" not in message and "Traceback" not in message
    return info.value


# -- the file itself ------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.pdf", "no such file")


def test_directory(tmp_path):
    expect_error(tmp_path, "is a directory")


@pytest.mark.parametrize("content", [b"", b"   \n\t\r\n  ", "\ufeff\n".encode("utf-8")])
def test_empty(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    expect_error(path, "empty document")


def test_oversize_checked_before_reading(tmp_path):
    path = tmp_path / "huge.pdf"
    with path.open("wb") as f:
        f.truncate(80_000_000)  # sparse: costs no disk, and is never read
    expect_error(path, "file is 80.0 MB, over the 50 MB limit (--max-bytes)")


def test_oversize_custom_limit_and_env(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text("x" * 1500)
    expect_error(path, "file is 1.5 kB, over the 1 kB limit (--max-bytes)", max_bytes=1000)
    monkeypatch.setenv("DOCREADER_MAX_BYTES", "1000")
    expect_error(path, "over the 1 kB limit")
    monkeypatch.setenv("DOCREADER_MAX_BYTES", "lots")
    with pytest.raises(DocreaderError, match="DOCREADER_MAX_BYTES must be a number"):
        load(path)


def test_human_size():
    assert [human_size(n) for n in (17, 1500, 80_000_000)] == ["17 bytes", "1.5 kB", "80.0 MB"]
    assert [human_size(n, limit=True) for n in (1000, 50_000_000, 1_500_000)] == ["1 kB", "50 MB", "1.5 MB"]


# -- PDF ------------------------------------------------------------------------------------------

def test_encrypted_pdf_needs_password(tmp_path):
    path = corpus.make_pdf(tmp_path / "locked.pdf", ["secret"], password="hunter2")
    expect_error(path, "encrypted PDF — pass --password")


def test_encrypted_pdf_wrong_password(tmp_path):
    path = corpus.make_pdf(tmp_path / "locked.pdf", ["secret"], password="hunter2")
    expect_error(path, "wrong password", password="letmein")


def test_pdf_without_text_layer(tmp_path):
    expect_error(corpus.make_blank_pdf(tmp_path / "scan.pdf"), "no extractable text — scanned?")


def test_truncated_pdf(tmp_path):
    data = corpus.pdf_bytes(corpus.page_texts(4))
    path = tmp_path / "cut.pdf"
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "truncated PDF")


def test_corrupt_pdf(tmp_path):
    path = tmp_path / "junk.pdf"
    path.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 20 + b"\n%%EOF\n")
    err = expect_error(path, "PDF")
    assert re.search(r"corrupt PDF|no extractable text", str(err))


# -- DOCX / EPUB ----------------------------------------------------------------------------------

def test_docx_with_bad_xml(tmp_path):
    path = tmp_path / "bad.docx"
    path.write_bytes(corpus.docx_bytes([], document_xml="<w:document><w:body><w:p>unclosed"))
    expect_error(path, "corrupt DOCX (bad XML in word/document.xml")


def test_docx_cut_short(tmp_path):
    data = corpus.docx_bytes([("p", "hello " * 2000)])
    path = tmp_path / "cut.docx"
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "corrupt DOCX")


def test_docx_without_document_xml(tmp_path):
    path = tmp_path / "hollow.docx"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
    expect_error(path, "corrupt DOCX (word/document.xml missing)")


def test_docx_entity_expansion_refused(tmp_path):
    xml = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
           f'<w:document xmlns:w="{corpus.W}"><w:body><w:p><w:r><w:t>&b;</w:t></w:r></w:p></w:body></w:document>')
    path = tmp_path / "laughs.docx"
    path.write_bytes(corpus.docx_bytes([], document_xml=xml))
    expect_error(path, "refusing to expand")


def test_epub_without_container_or_opf(tmp_path):
    path = tmp_path / "hollow.epub"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/epub+zip")
        z.writestr("OEBPS/ch1.xhtml", "<html><body><p>hi</p></body></html>")
    expect_error(path, "corrupt EPUB (META-INF/container.xml missing)")


def test_epub_with_broken_opf(tmp_path):
    data = corpus.epub_bytes(corpus.book_chapters(1))
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            body = b"<package><manifest>" if info.filename.endswith(".opf") else src.read(info)
            dst.writestr(info.filename, body)
    path = tmp_path / "broken.epub"
    path.write_bytes(buf.getvalue())
    expect_error(path, "corrupt EPUB (bad XML in OEBPS/content.opf")


def test_zip_bomb_by_ratio(tmp_path):
    expect_error(corpus.zip_bomb(tmp_path / "bomb.docx"), "looks like a zip bomb")


def test_zip_bomb_over_budget(tmp_path):
    # 2 MB inflated is over 4 × a 300 kB --max-bytes budget, whatever the ratio
    path = corpus.zip_bomb(tmp_path / "bomb.epub", member="META-INF/container.xml", size=2_000_000)
    expect_error(path, "EPUB looks like a zip bomb", max_bytes=300_000)


def test_zip_with_lying_sizes(tmp_path):
    err = expect_error(corpus.lying_zip(tmp_path / "liar.docx"), "DOCX")
    assert re.search(r"zip bomb|corrupt DOCX", str(err))


def test_zip_that_is_neither(tmp_path):
    path = tmp_path / "archive.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    expect_error(path, "not a supported document (zip archive, not DOCX or EPUB)")


# -- text and binary ------------------------------------------------------------------------------

def test_binary_garbage(tmp_path):
    expect_error(corpus.binary_garbage(tmp_path / "garbage.txt"), "not a supported document (binary data)")
    with pytest.raises(DocreaderError, match="binary data"):
        detect_format(tmp_path / "garbage.txt")


def test_image_with_document_extension(tmp_path):
    path = tmp_path / "scan.pdf"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    expect_error(path, "not a supported document (PNG image)")


def test_legacy_word_document(tmp_path):
    path = tmp_path / "old.doc"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500))
    expect_error(path, "legacy Office file")


def test_text_with_pdf_extension_loads_as_text(tmp_path):
    path = tmp_path / "notes.pdf"
    path.write_text("These are plain notes, saved with the wrong extension.\n")
    doc = load(path)
    assert doc.format == "txt" and doc.text.startswith("These are plain notes")


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16"])
def test_non_utf8_is_read_not_rejected(tmp_path, encoding):
    path = tmp_path / f"{encoding}.txt"
    path.write_bytes(corpus.ACCENTED.encode(encoding))
    assert load(path).text == corpus.ACCENTED


def test_forced_format_that_does_not_fit(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello there")
    expect_error(path, "not a PDF (no %PDF- header)", format="pdf")
    expect_error(path, "corrupt DOCX (not a valid zip archive", format="docx")
    expect_error(path, "corrupt EPUB (not a valid zip archive", format="epub")


def test_unknown_format_override(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello")
    expect_error(path, "unknown format 'rtf'", format="rtf")


def test_chat_format_without_messages(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text("[]")
    expect_error(path, "no chat messages found", format="chat")


def test_invalid_json_chat(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text('{"messages": [')
    expect_error(path, "invalid JSON chat export", format="chat")
