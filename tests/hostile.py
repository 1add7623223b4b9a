"""Generators of hostile input files (issue 15): small files that hang, blow up or smuggle code into a load.

Each builder writes one file under the given directory and returns its path; all are built at test time.
"""

from __future__ import annotations

import io
import zlib
import zipfile
from pathlib import Path

from corpus import FONT, W, docx_bytes, epub_bytes, page_texts, pdf_bytes, raw_pdf


def stream(data: bytes, extra: bytes = b"", compress: bool = False) -> bytes:
    if compress:
        data, extra = zlib.compress(data, 9), extra + b" /Filter /FlateDecode"
    return b"<< /Length %d%s >>\nstream\n" % (len(data), extra) + data + b"\nendstream"


def redos_text(tmp: Path) -> Path:
    """282 bytes that made the HTML sniffing regex backtrack for hours."""
    path = tmp / "comments.txt"
    path.write_text("<!---->" * 40 + "x")
    return path


def epub_repeated_spine(tmp: Path, times: int = 9000) -> Path:
    """A tiny EPUB whose spine lists its one chapter `times` times."""
    data = epub_bytes([("One", "<p>" + "All work and no play. " * 100 + "</p>")])
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            body = src.read(info)
            if info.filename.endswith(".opf"):
                body = body.replace(b'<itemref idref="ch1"/>', b'<itemref idref="ch1"/>' * times)
            z.writestr(info.filename, body)
    path = tmp / "spine.epub"
    path.write_bytes(buf.getvalue())
    return path


def pdf_xobject_repeated(tmp: Path, times: int = 5000) -> Path:
    """One page that draws one text-bearing form XObject `times` times."""
    form = b"BT /F1 10 Tf 0 0 Td " + b"(All work and no play makes Jack a dull boy) Tj " * 20 + b"ET"
    page = b"/X0 Do\n" * times
    path = tmp / "xobject.pdf"
    path.write_bytes(raw_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> "
        b"/XObject << /X0 6 0 R >> >> /Contents 4 0 R >>",
        stream(page, compress=True), FONT,
        stream(form, b" /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >>",
               compress=True),
    ]))
    return path


def pdf_shared_content(tmp: Path, pages: int = 20, mb: int = 12) -> Path:
    """`pages` pages that all share one content stream of about `mb` MB (compressed to a few kB)."""
    content = b"BT /F1 1 Tf 0 0 Td (a) Tj ET\n" * (mb * 1_000_000 // 29)
    kids = b" ".join(b"%d 0 R" % (5 + i) for i in range(pages))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
               stream(content, compress=True), FONT]
    objects += [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
                b"/Contents 3 0 R >>"] * pages
    path = tmp / "shared.pdf"
    path.write_bytes(raw_pdf(objects))
    return path


def pdf_undecodable_page(tmp: Path) -> Path:
    """Three pages; the second's content stream claims FlateDecode but holds garbage."""
    good = b"BT /F1 11 Tf 72 700 Td (Readable page text) Tj ET"
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R 4 0 R 5 0 R] /Count 3 >>"]
    page = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 8 0 R >> >> "
            b"/Contents %d 0 R >>")
    objects += [page % 6, page % 7, page % 6, stream(good), stream(b"\x00garbage" * 50, b" /Filter /FlateDecode"), FONT]
    path = tmp / "undecodable.pdf"
    path.write_bytes(raw_pdf(objects))
    return path


def many_page_pdf(tmp: Path, pages: int = 50) -> Path:
    """An ordinary PDF long enough to be extracted in worker processes."""
    path = tmp / "long.pdf"
    path.write_bytes(pdf_bytes(page_texts(pages)))
    return path


def big_markdown(tmp: Path, mb: int = 49) -> Path:
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n"
    path = tmp / "big.md"
    with path.open("w") as f:
        f.write("# Title\n\n## Part\n\n")
        chunk = line * 12_500  # ~1 MB
        for _ in range(mb):
            f.write(chunk)
    return path


def late_nul_text(tmp: Path) -> Path:
    path = tmp / "late_nul.txt"
    path.write_bytes(b"plain words here\n" * 4000 + b"\x00" + b"more words\n" * 10)
    return path


def _nest(depth: int, open_tag: str, close_tag: str, inner: str) -> str:
    return open_tag * depth + inner + close_tag * depth


def docx_deep(tmp: Path, kind: str, depth: int = 5000) -> Path:
    """Runs nested `depth` deep inside one paragraph ("runs"), or content controls nested around it ("sdt")."""
    para = "<w:p><w:r><w:t>deep</w:t></w:r></w:p>"
    if kind == "runs":
        body = "<w:p>" + _nest(depth, "<w:r>", "</w:r>", "<w:t>deep</w:t>") + "</w:p>"
    else:
        body = _nest(depth, "<w:sdt><w:sdtContent>", "</w:sdtContent></w:sdt>", para)
    xml = f'<?xml version="1.0"?><w:document xmlns:w="{W}"><w:body>{body}</w:body></w:document>'
    path = tmp / f"deep_{kind}.docx"
    path.write_bytes(docx_bytes([], document_xml=xml))
    return path


def docx_late_entity(tmp: Path) -> Path:
    """An inline DTD placed after a 70 kB comment, past a 64 KiB scan window."""
    xml = ('<?xml version="1.0"?><!--' + "c" * 70_000 + '--><!DOCTYPE d [<!ENTITY a "' + "a" * 100 + '">'
           '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
           f'<w:document xmlns:w="{W}"><w:body><w:p><w:r><w:t>&b;</w:t></w:r></w:p></w:body></w:document>')
    path = tmp / "late_entity.docx"
    path.write_bytes(docx_bytes([], document_xml=xml))
    return path


def chat_surrogate(tmp: Path) -> Path:
    path = tmp / "surrogate.json"
    path.write_text('{"messages": [{"author": "al\\ud800ice", "text": "hi \\ud800 there"},'
                    ' {"author": "bob", "text": "hello"}]}')
    return path


def deep_json(tmp: Path, depth: int = 100_000) -> Path:
    path = tmp / "deep.json"
    path.write_text('{"messages": ' + "[" * depth + "]" * depth + "}")
    return path


def evil_json_module(directory: Path, marker: Path) -> Path:
    """A json.py that leaves a marker file when imported (from the current directory)."""
    path = directory / "json.py"
    path.write_text(f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit('evil json.py imported')\n")
    return path

