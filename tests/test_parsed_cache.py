"""The parsed-document cache (docreader.loaders.parsed): a second load of the same PDF/DOCX/EPUB bytes skips the
parser and gives the same Document; anything that could change the parse (bytes, limits) misses; encrypted or
password-read PDFs never land on disk; a bad entry is parsed again; the CLI's --no-cache and `cache clear`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from corpus import make_docx, make_epub, make_pdf, page_texts
from docreader import loaders
from docreader.errors import DocreaderError
from docreader.loaders import load, parsed


def _same(a, b) -> None:
    assert (a.format, a.text, a.regions, a.meta) == (b.format, b.text, b.regions, b.meta)


@pytest.mark.parametrize("make", [lambda p: make_pdf(p / "c.pdf", page_texts(3), roman_front=1),
                                  lambda p: make_docx(p / "c.docx"), lambda p: make_epub(p / "b.epub")])
def test_second_load_is_the_first(make, home, tmp_path, monkeypatch):
    path = make(tmp_path)
    first = load(path, cache=True)
    assert len(list(parsed.parsed_dir().glob("*.json"))) == 1
    copy = tmp_path / ("renamed" + path.suffix)
    copy.write_bytes(path.read_bytes())
    monkeypatch.setattr(loaders, "_parse", lambda *a, **k: pytest.fail("parsed again"))
    again = load(copy, cache=True)
    _same(first, again)
    assert again.path == str(copy)  # the same bytes under another name: the new name


def test_changed_bytes_or_limits_parse_again(home, tmp_path):
    pdf = make_pdf(tmp_path / "c.pdf", page_texts(3))
    first = load(pdf, cache=True)
    make_pdf(pdf, page_texts(3, seed=1))
    second = load(pdf, cache=True)
    assert second.text != first.text and second.text == load(pdf).text
    assert len(list(parsed.parsed_dir().glob("*.json"))) == 2
    with pytest.raises(DocreaderError, match="too long"):  # a smaller window refuses it though a parse is kept
        load(pdf, cache=True, max_tokens=20)


def test_off_by_default_and_cli_no_cache(home, tmp_path, monkeypatch):
    pdf = make_pdf(tmp_path / "c.pdf", page_texts(2))
    load(pdf)
    assert not parsed.parsed_dir().exists()
    from docreader.cli import app
    seen = []

    def fake_load(*a, cache=False, **k):
        seen.append(cache)
        raise DocreaderError("stop here", path=str(pdf))
    monkeypatch.setattr(loaders, "load", fake_load)
    for flags in ([], ["--no-cache"]):
        assert CliRunner().invoke(app, ["ask", str(pdf), "q?", *flags]).exit_code != 0
    assert seen == [True, False]


def test_encrypted_or_password_pdf_not_kept(home, tmp_path):
    locked = make_pdf(tmp_path / "l.pdf", page_texts(2), password="s3cret")
    load(locked, password="s3cret", cache=True)
    plain = make_pdf(tmp_path / "p.pdf", page_texts(2))
    assert not parsed.keepable("pdf", locked.read_bytes(), None)  # /Encrypt: not even with the empty password
    assert not parsed.keepable("pdf", plain.read_bytes(), "pw")
    assert not parsed.parsed_dir().exists()


@pytest.mark.parametrize("damage", ["garbage", "other key", "truncated"])
def test_bad_entry_is_parsed_again(damage, home, tmp_path):
    pdf = make_pdf(tmp_path / "c.pdf", page_texts(3))
    first = load(pdf, cache=True)
    (entry,) = parsed.parsed_dir().glob("*.json")
    raw = entry.read_text()
    if damage == "garbage":
        entry.write_bytes(b"\x00\xff not json")
    elif damage == "other key":
        body = json.loads(raw)
        body["key"], body["text"] = "0" * 40, "a wrong text"
        entry.write_text(json.dumps(body))
    else:
        entry.write_text(raw[: len(raw) // 2])
    _same(first, load(pdf, cache=True))
    _same(first, load(pdf, cache=True))  # and the entry was rewritten whole


def test_bounded(home, tmp_path, monkeypatch):
    monkeypatch.setattr(parsed, "MAX_ENTRIES", 2)
    for i in range(4):
        load(make_pdf(tmp_path / f"c{i}.pdf", page_texts(1, seed=i)), cache=True)
    assert len(list(parsed.parsed_dir().glob("*.json"))) == 2


def test_cli_clear_removes_parsed(home, tmp_path):
    from docreader.cli import app
    load(make_pdf(tmp_path / "c.pdf", page_texts(2)), cache=True)
    out = CliRunner().invoke(app, ["cache", "clear"])
    assert out.exit_code == 0 and "1 parsed documents" in out.output
    assert not list(parsed.parsed_dir().glob("*.json"))
