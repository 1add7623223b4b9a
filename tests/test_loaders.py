"""Each format loads a real (sample_docs) or generated document into text plus correct regions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402

from docreader.loaders import SUPPORTED_FORMATS, detect_format, load, pdf_pages  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_docs"
SHARED_IRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "irc"


@pytest.fixture(scope="session")
def irc_logs() -> list[Path]:
    """Real IRC logs: the shared data set when this checkout has it, else the one in sample_docs."""
    shared = sorted(SHARED_IRC.glob("*.raw.txt")) if SHARED_IRC.is_dir() else []
    return shared or [SAMPLES / "ubuntu_irc_2005-07-06_14.raw.txt"]


def kinds(doc, kind):
    return [r for r in doc.regions if r.kind == kind]


# -- real samples ---------------------------------------------------------------------------------

def test_sample_pdf_pages():
    doc = load(SAMPLES / "cuad_limeenergy_distributor_agreement.pdf")
    pages = kinds(doc, "page")
    assert doc.format == "pdf" and doc.kind == "contract"
    assert len(pages) == doc.meta["pages"] == 10
    assert [p.label for p in pages[:2]] == ["PDF page 1", "PDF page 2"]
    assert pages[0].meta == {"page": 1, "page_label": "1"}
    assert "DISTRIBUTOR" in doc.text[pages[0].start:pages[0].end]
    at = doc.text.index("RECITALS")
    assert doc.locate(at, at + 8)["label"] == "PDF page 1"  # the pages print no number of their own
    # the last page prints "Page -14-" in its footer: cited as that, with its index for a viewer's page box
    assert (pages[9].label, pages[9].meta) == ("p. 14 (PDF page 10)", {"page": 10, "page_label": "14"})


def test_sample_markdown_book_chapters():
    doc = load(SAMPLES / "pride_and_prejudice.md", max_tokens=200_000)  # longer than today's 32k window
    sections = kinds(doc, "section")
    labels = [s.label for s in sections]
    assert doc.format == "md" and doc.kind == "book"
    assert "Chapter 1" in labels and "Chapter 61" in labels
    assert doc.meta["title"] == "Pride and Prejudice" and doc.meta["author"] == "Jane Austen"
    at = doc.text.index("It is a truth universally acknowledged")
    loc = doc.locate(at, at + 10)
    assert loc["label"] == f"Chapter 1, line {loc['line']}"
    assert doc.text == (SAMPLES / "pride_and_prejudice.md").read_text(encoding="utf-8").replace("\r\n", "\n")


def test_irc_logs_one_message_per_line(irc_logs):
    for path in irc_logs:
        raw = [ln for ln in path.read_text(encoding="utf-8", errors="replace").split("\n") if ln.strip()]
        doc = load(path)
        messages = kinds(doc, "message")
        assert doc.format == "chat" and doc.kind == "chat"
        assert len(messages) == len(raw), path  # message i is log line i, as the annotations assume
        for region in messages:
            assert "\n" not in doc.text[region.start:region.end]


def test_sample_irc_labels():
    doc = load(SAMPLES / "ubuntu_irc_2005-07-06_14.raw.txt")
    first = kinds(doc, "message")[0]
    assert first.label == "message 1 — Seveas, 11:11"
    assert first.meta == {"speaker": "Seveas", "time": "11:11"}
    assert doc.text.startswith("[11:11] Seveas: Amaranth, the US peer")


# -- generated documents --------------------------------------------------------------------------

def test_pdf_printed_page_labels(tmp_path):
    doc = load(corpus.make_pdf(tmp_path / "labels.pdf", corpus.page_texts(5), roman_front=2))
    pages = kinds(doc, "page")
    assert [p.label for p in pages] == ["p. i", "p. ii", "p. 1", "p. 2", "p. 3"]
    assert pages[2].meta == {"page": 3, "page_label": "1"}
    loc = doc.locate(pages[1].start, pages[2].start + 3)
    assert loc["page"] == 2 and loc["page_end"] == 3 and loc["page_label"] == "ii"
    assert loc["label"] == "p. ii – p. 1"


def test_pdf_with_password(tmp_path):
    path = corpus.make_pdf(tmp_path / "locked.pdf", ["secret terms apply"], password="hunter2")
    doc = load(path, password="hunter2")
    assert "secret terms apply" in doc.text


def test_pdf_parallel_extraction_matches_serial(tmp_path, monkeypatch):
    path = corpus.make_pdf(tmp_path / "long.pdf", corpus.page_texts(60))
    monkeypatch.setenv("DOCREADER_PDF_WORKERS", "1")
    serial = load(path)
    monkeypatch.setenv("DOCREADER_PDF_WORKERS", "2")
    parallel = load(path)
    assert parallel.text == serial.text and parallel.regions == serial.regions
    assert len(kinds(serial, "page")) == 60
    # the worker processes themselves, not the serial fallback
    texts, failed = pdf_pages._extract_parallel(path.read_bytes(), None, 60, 2)
    assert len(texts) == 60 and not failed and texts[0].startswith("Page 1 heading")


def test_docx_paragraphs_tables_headings_and_notes(tmp_path):
    doc = load(corpus.make_docx(tmp_path / "contract.docx"))
    assert doc.format == "docx"
    assert "Term\tmeans the period stated below.\nIt may be renewed." in doc.text
    assert "Party | Role\nAcme Corp | Supplier\nGlobex Ltd | Customer" in doc.text
    assert "[Header] CONFIDENTIAL" in doc.text and "[Footer] Page footer text" in doc.text
    assert "[Footnote 1] Subject to local law." in doc.text and "----" not in doc.text
    assert [s.label for s in kinds(doc, "section")] == [
        "Master Services Agreement", "1. Definitions", "2. Payment", "headers, footers and notes"]
    at = doc.text.index("Fees are due")
    assert doc.locate(at, at + 4)["label"].startswith("2. Payment, line ")


@pytest.mark.parametrize("toc", ["nav", "ncx", "none"])
def test_epub_spine_and_chapter_titles(tmp_path, toc):
    doc = load(corpus.make_epub(tmp_path / "book.epub", toc=toc))
    assert doc.format == "epub" and doc.kind == "book"
    assert [s.label for s in kinds(doc, "section")] == ["Chapter 1", "Chapter 2", "Chapter 3"]
    assert doc.text.index("day 1") < doc.text.index("day 2") < doc.text.index("day 3")
    assert "hidden" not in doc.text and "margin" not in doc.text
    assert doc.meta["title"] == "Test Book"


def test_epub_toc_titles_override_headings(tmp_path):
    chapters = [("The Beginning", "<h1>I</h1><p>First.</p>"), ("The End", "<h1>II</h1><p>Last.</p>")]
    doc = load(corpus.make_epub(tmp_path / "b.epub", chapters=chapters, toc="nav"))
    assert [s.label for s in kinds(doc, "section")] == ["The Beginning", "The End"]


def test_html_visible_text_and_sections(tmp_path):
    doc = load(corpus.make_html(tmp_path / "page.html"))
    assert doc.format == "html" and doc.meta["title"] == "Release notes"
    assert "Version 2.0 brings faster loading & fewer bugs." in doc.text
    for hidden in ("not visible", "color: red", "secret hidden text"):
        assert hidden not in doc.text
    assert "- New parser\n- Better errors" in doc.text
    assert "Module | Status\npdf | done" in doc.text
    assert [s.label for s in kinds(doc, "section")] == ["Release notes", "Changes", "Known issues"]


@pytest.mark.parametrize("style", ["list", "wrapped"])
def test_json_chat(tmp_path, style):
    doc = load(corpus.make_chat_json(tmp_path / "chat.json", style))
    lines = doc.text.strip().split("\n")
    assert lines[0] == "[14:00] alice: message number 0 here"
    assert lines[1] == "[14:01] bob: message number 1 here / second line"
    messages = kinds(doc, "message")
    assert messages[1].label == "message 2 — bob, 14:01"
    assert messages[1].meta == {"speaker": "bob", "time": "14:01"}


def test_slack_export(tmp_path):
    doc = load(corpus.make_chat_json(tmp_path / "slack.json", "slack"))
    assert kinds(doc, "message")[0].meta["speaker"] == "alice"
    assert "[22:13] alice: message number 0 here" in doc.text  # epoch seconds shown in UTC


def test_chatgpt_export(tmp_path):
    doc = load(corpus.make_chat_json(tmp_path / "conversations.json", "chatgpt"))
    assert [r.meta["speaker"] for r in kinds(doc, "message")] == ["user", "assistant", "user", "assistant", "user"]
    assert kinds(doc, "section")[0].label == "Planning chat"


@pytest.mark.parametrize("style", ["android", "ios"])
def test_whatsapp(tmp_path, style):
    doc = load(corpus.make_whatsapp(tmp_path / "WhatsApp Chat.txt", style))
    assert doc.format == "chat" and doc.meta["source"] == "whatsapp"
    assert "[14:05] bob: same to you / with a second line" in doc.text
    by_speaker = [r for r in kinds(doc, "message") if r.meta["speaker"] == "alice"]
    assert by_speaker[-1].meta["time"] == "00:01" and by_speaker[-1].meta["date"] == "2024-01-01"
    assert "--- 2023-12-31 ---" in doc.text


def test_irc_actions_and_system_lines(tmp_path):
    doc = load(corpus.make_irc(tmp_path / "channel.log"))
    lines = doc.text.strip().split("\n")
    assert lines[2] == "=== carol [~carol@example.org] has joined #test"
    assert lines[3] == "[14:03] * bob waves"
    messages = kinds(doc, "message")
    assert messages[2].meta["type"] == "system" and messages[2].label == "message 3 — carol"


def test_plain_text_chapters_and_crlf(tmp_path):
    path = tmp_path / "novel.txt"
    path.write_bytes(b"Preface.\r\n\r\nCHAPTER I.\r\nIt began.\r\n\r\nCHAPTER II.\r\nIt ended.\r\n")
    doc = load(path)
    assert doc.format == "txt" and "\r" not in doc.text
    assert [s.label for s in kinds(doc, "section")] == ["CHAPTER I", "CHAPTER II"]


# -- detection and overrides ----------------------------------------------------------------------

@pytest.mark.parametrize("maker, name, expected", [
    (lambda p: corpus.make_pdf(p, ["hello"]), "really_a_pdf.txt", "pdf"),
    (corpus.make_docx, "really_a_docx.pdf", "docx"),
    (corpus.make_epub, "really_an_epub.zip", "epub"),
    (corpus.make_html, "really_html.txt", "html"),
    (corpus.make_irc, "really_chat.md", "chat"),
    (lambda p: corpus.make_chat_json(p, "slack"), "export.txt", "chat"),
    (lambda p: p.write_text("# A\n\ntext\n\n## B\n\nmore\n") and p, "notes.txt", "md"),
    (lambda p: p.write_text("just words\n") and p, "notes.dat", "txt"),
])
def test_detect_format_by_content(tmp_path, maker, name, expected):
    path = tmp_path / name
    maker(path)
    assert detect_format(path) == expected
    assert load(path).format == expected


def test_format_override(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("# A\n\ntext\n\n## B\n\nmore\n")
    assert load(path).format == "md"
    doc = load(path, format="txt")
    assert doc.format == "txt" and not doc.regions


def test_supported_formats():
    assert set(SUPPORTED_FORMATS) == {"pdf", "txt", "md", "html", "epub", "docx", "chat"}


def test_env_max_bytes(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text("x" * 2000)
    monkeypatch.setenv("DOCREADER_MAX_BYTES", "100000")
    assert len(load(path).text) == 2000


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16", "utf-8-sig", "utf-16-le"])
def test_non_utf8_text_decodes(tmp_path, encoding):
    text = corpus.ACCENTED + ("“smart quotes” — €" if encoding in ("cp1252", "utf-16", "utf-8-sig", "utf-16-le") else "")
    path = tmp_path / f"{encoding}.txt"
    path.write_bytes(text.encode(encoding))
    doc = load(path)
    assert doc.text == text
