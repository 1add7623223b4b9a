"""Generators of test documents: every supported format and every kind of bad input, built in a temp dir.

Nothing here needs network, fonts or heavy libraries: PDFs are written by hand (one Helvetica text
object per line) and post-processed with pypdf; DOCX and EPUB are assembled with zipfile.
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path

from pypdf import PdfReader, PdfWriter

# -- PDF ------------------------------------------------------------------------------------------


def _pdf_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pdf_bytes(pages: list[str]) -> bytes:
    """A minimal valid PDF with a real text layer: one page per string, one text line per line."""
    objects: list[bytes] = []
    n = len(pages)
    font_id, pages_id = 3 + 2 * n, 2
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    for i, text in enumerate(pages):
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 740 Td"]
        for line in text.split("\n"):
            ops.append(f"({_pdf_escape(line)}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(f"<< /Type /Page /Parent {pages_id} 0 R /MediaBox [0 0 612 792] "
                       f"/Resources << /Font << /F1 {font_id} 0 R >> >> /Contents {4 + 2 * i} 0 R >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(FONT)
    return raw_pdf(objects)


FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"


def raw_pdf(objects: list[bytes]) -> bytes:
    """A PDF from object bodies numbered 1.. in order (1 must be the catalog), with a correct xref table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for num, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % num + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def page_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "agreement party term license fee notice breach payment territory warranty".split()
    return [f"Page {i + 1} heading\n" + "\n".join(" ".join(rng.choice(words) for _ in range(9)) for _ in range(6))
            for i in range(n)]


def make_pdf(path: Path, pages: list[str], roman_front: int = 0, password: str | None = None) -> Path:
    """A PDF of `pages`; the first `roman_front` pages get labels i, ii, … and the rest 1, 2, …"""
    data = pdf_bytes(pages)
    if roman_front or password:
        writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
        if roman_front:
            writer.set_page_label(0, roman_front - 1, style="/r")
            writer.set_page_label(roman_front, len(pages) - 1, style="/D", start=1)
        if password:
            writer.encrypt(password, algorithm="RC4-128")
        buf = io.BytesIO()
        writer.write(buf)
        data = buf.getvalue()
    path.write_bytes(data)
    return path


def make_blank_pdf(path: Path, pages: int = 2) -> Path:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    with path.open("wb") as f:
        writer.write(f)
    return path


# -- DOCX -----------------------------------------------------------------------------------------

W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_CT = ('<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
       'content-types"><Default Extension="xml" ContentType="application/xml"/></Types>')


def _run(text: str) -> str:
    parts = []
    for i, piece in enumerate(text.split("\t")):
        if i:
            parts.append("<w:tab/>")
        parts.append(f'<w:t xml:space="preserve">{_xml(piece)}</w:t>')
    return "<w:r>" + "".join(parts) + "</w:r>"


def _xml(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _para(text: str, style: str | None = None) -> str:
    ppr = f'<w:pPr><w:pStyle w:val="{style}"/><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr>' if style else ""
    lines = text.split("\n")
    runs = "<w:r><w:br/></w:r>".join(_run(ln) for ln in lines)
    return f"<w:p>{ppr}{runs}</w:p>"


def docx_bytes(blocks: list, header: str | None = None, footer: str | None = None,
               footnote: str | None = None, document_xml: str | None = None) -> bytes:
    """blocks: ("h1", text) | ("p", text) | ("table", [[cell, …], …])."""
    body = []
    for kind, value in blocks:
        if kind == "table":
            rows = "".join("<w:tr>" + "".join(f"<w:tc>{_para(c)}</w:tc>" for c in row) + "</w:tr>" for row in value)
            body.append(f"<w:tbl><w:tblPr/>{rows}</w:tbl>")
        elif kind.startswith("h"):
            body.append(_para(value, style=f"Heading{kind[1:]}"))
        else:
            body.append(_para(value))
    xml = document_xml or (f'<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="{W}"><w:body>'
                           + "".join(body) + "<w:sectPr/></w:body></w:document>")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", _CT)
        z.writestr("word/document.xml", xml)
        if header:
            z.writestr("word/header1.xml", f'<w:hdr xmlns:w="{W}">{_para(header)}</w:hdr>')
        if footer:
            z.writestr("word/footer1.xml", f'<w:ftr xmlns:w="{W}">{_para(footer)}</w:ftr>')
        if footnote:
            z.writestr("word/footnotes.xml", f'<w:footnotes xmlns:w="{W}"><w:footnote w:type="separator" w:id="-1">'
                       f'{_para("----")}</w:footnote><w:footnote w:id="1">{_para(footnote)}</w:footnote></w:footnotes>')
    return buf.getvalue()


def make_docx(path: Path, **kw) -> Path:
    blocks = kw.pop("blocks", None) or [
        ("h1", "Master Services Agreement"),
        ("p", "This agreement is made between Acme Corp and Globex Ltd."),
        ("h2", "1. Definitions"),
        ("p", "Term\tmeans the period stated below.\nIt may be renewed."),
        ("table", [["Party", "Role"], ["Acme Corp", "Supplier"], ["Globex Ltd", "Customer"]]),
        ("h2", "2. Payment"),
        ("p", "Fees are due within 30 days of invoice."),
    ]
    kw.setdefault("header", "CONFIDENTIAL")
    kw.setdefault("footer", "Page footer text")
    kw.setdefault("footnote", "Subject to local law.")
    path.write_bytes(docx_bytes(blocks, **kw))
    return path


# -- EPUB -----------------------------------------------------------------------------------------

def epub_bytes(chapters: list[tuple[str, str]], toc: str = "nav", container: bool = True) -> bytes:
    """chapters: (title, body HTML). toc: "nav" (EPUB 3), "ncx" (EPUB 2) or "none" (titles from headings)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip")
        if container:
            z.writestr("META-INF/container.xml", '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:'
                       'names:tc:opendocument:xmlns:container"><rootfiles><rootfile full-path="OEBPS/content.opf" '
                       'media-type="application/oebps-package+xml"/></rootfiles></container>')
        items, refs, nav_links, ncx_points = [], [], [], []
        for i, (title, body) in enumerate(chapters, start=1):
            name = f"text/ch{i}.xhtml"
            z.writestr(f"OEBPS/{name}", '<?xml version="1.0" encoding="utf-8"?><!DOCTYPE html><html xmlns='
                       f'"http://www.w3.org/1999/xhtml"><head><title>{title}</title><style>p{{margin:0}}</style>'
                       f'</head><body>{body}</body></html>')
            items.append(f'<item id="ch{i}" href="{name}" media-type="application/xhtml+xml"/>')
            refs.append(f'<itemref idref="ch{i}"/>')
            nav_links.append(f'<li><a href="{name}">{title}</a></li>')
            ncx_points.append(f'<navPoint id="n{i}" playOrder="{i}"><navLabel><text>{title}</text></navLabel>'
                              f'<content src="{name}"/></navPoint>')
        if toc == "nav":
            z.writestr("OEBPS/nav.xhtml", '<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml" '
                       'xmlns:epub="http://www.idpf.org/2007/ops"><body><nav epub:type="toc"><ol>'
                       + "".join(nav_links) + "</ol></nav></body></html>")
            items.append('<item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>')
        elif toc == "ncx":
            z.writestr("OEBPS/toc.ncx", '<?xml version="1.0"?><ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" '
                       'version="2005-1"><navMap>' + "".join(ncx_points) + "</navMap></ncx>")
            items.append('<item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/>')
        spine_open = '<spine toc="ncx">' if toc == "ncx" else "<spine>"
        z.writestr("OEBPS/content.opf", '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" '
                   'version="3.0"><metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Test Book'
                   '</dc:title><dc:creator>A. Writer</dc:creator></metadata><manifest>' + "".join(items) +
                   "</manifest>" + spine_open + "".join(refs) +
                   "</spine></package>")
    return buf.getvalue()


def book_chapters(n: int = 3) -> list[tuple[str, str]]:
    return [(f"Chapter {i}", f"<h1>Chapter {i}</h1><p>It was day {i} of the voyage.</p>"
             f"<p>The captain wrote <em>nothing</em> in the log.</p><script>var x = 'hidden {i}';</script>")
            for i in range(1, n + 1)]


def make_epub(path: Path, chapters: list[tuple[str, str]] | None = None, toc: str = "nav") -> Path:
    path.write_bytes(epub_bytes(chapters or book_chapters(), toc=toc))
    return path


# -- HTML, chats, text ----------------------------------------------------------------------------

HTML_PAGE = """<!DOCTYPE html>
<html><head><title>Release notes</title><style>body { color: red }</style>
<script>document.write("not visible")</script></head>
<body>
<h1>Release notes</h1>
<p>Version   2.0 brings <b>faster</b> loading &amp; fewer bugs.</p>
<div hidden>secret hidden text</div>
<h2>Changes</h2>
<ul><li>New parser</li><li>Better errors</li></ul>
<table><tr><th>Module</th><th>Status</th></tr><tr><td>pdf</td><td>done</td></tr></table>
<h2>Known issues</h2>
<p>None so far.<br>Really.</p>
</body></html>
"""


def make_html(path: Path) -> Path:
    path.write_text(HTML_PAGE, encoding="utf-8")
    return path


def chat_messages(n: int = 5) -> list[tuple[str, str, str]]:
    speakers = ["alice", "bob", "carol"]
    return [(speakers[i % 3], f"{14 + i // 60:02d}:{i % 60:02d}", f"message number {i} here") for i in range(n)]


def make_chat_json(path: Path, style: str = "list") -> Path:
    """style: "list" (generic), "wrapped" ({"messages": …}), "slack" or "chatgpt"."""
    msgs = chat_messages()
    if style == "slack":
        obj: object = [{"type": "message", "user": f"U{s}", "user_profile": {"real_name": s},
                        "ts": f"{1700000000 + 60 * i}.000100", "text": t} for i, (s, _, t) in enumerate(msgs)]
    elif style == "chatgpt":
        mapping = {"root": {"id": "root", "message": None, "parent": None, "children": ["m0"]}}
        for i, (s, _, t) in enumerate(msgs):
            role = "user" if i % 2 == 0 else "assistant"
            mapping[f"m{i}"] = {"id": f"m{i}", "parent": "root" if i == 0 else f"m{i - 1}",
                                "children": [f"m{i + 1}"] if i + 1 < len(msgs) else [],
                                "message": {"author": {"role": role}, "create_time": 1700000000 + 60 * i,
                                            "content": {"content_type": "text", "parts": [t]}}}
        obj = [{"title": "Planning chat", "mapping": mapping, "current_node": f"m{len(msgs) - 1}"}]
    else:
        items = [{"author": s, "time": tm, "text": t + ("\nsecond line" if i == 1 else "")}
                 for i, (s, tm, t) in enumerate(msgs)]
        obj = items if style == "list" else {"messages": items}
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def make_whatsapp(path: Path, style: str = "android") -> Path:
    if style == "android":
        lines = ["12/31/23, 14:03 - Messages and calls are end-to-end encrypted.",
                 "12/31/23, 14:03 - alice: happy new year's eve",
                 "12/31/23, 14:05 - bob: same to you", "with a second line",
                 "1/1/24, 0:01 - alice: it's 2024!"]
    else:
        lines = ["[31/12/2023, 14:03:05] alice: happy new year's eve",
                 "[31/12/2023, 14:05:10] bob: same to you", "with a second line",
                 "[01/01/2024, 00:01:00] alice: it's 2024!"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


IRC_LOG = """[14:01] <alice> hi all
[14:02] <bob> hello alice
=== carol [~carol@example.org] has joined #test
[14:03] * bob waves
[14:04] <carol> what did I miss?
"""


def make_irc(path: Path) -> Path:
    path.write_text(IRC_LOG, encoding="utf-8")
    return path


ACCENTED = ("Le café de la rue Saint-Honoré était fermé. Déjà, à l'été, les élèves français "
            "préféraient la crème brûlée et le pâté. Où est la façade? Très bien, merci. ") * 8


# -- bad input ------------------------------------------------------------------------------------

def zip_bomb(path: Path, member: str = "word/document.xml", size: int = 20_000_000) -> Path:
    """A small zip whose one member inflates to `size` bytes of zeros (ratio ≈ 1000:1)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", _CT)
        with z.open(member, "w", force_zip64=False) as f:
            chunk = b"\0" * 1_000_000
            for _ in range(size // len(chunk)):
                f.write(chunk)
    path.write_bytes(buf.getvalue())
    return path


def lying_zip(path: Path, size: int = 3_000_000) -> Path:
    """A DOCX whose headers under-declare document.xml's size (the real data is `size` bytes)."""
    body = b"<w:document xmlns:w='x'><w:body>" + b"<w:p/>" * (size // 6) + b"</w:body></w:document>"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", body)
    data = bytearray(buf.getvalue())
    real = len(body).to_bytes(4, "little")
    fake = (1000).to_bytes(4, "little")
    data = data.replace(real, fake)  # both the local header and the central directory entry
    path.write_bytes(bytes(data))
    return path


def binary_garbage(path: Path, n: int = 4096, seed: int = 7) -> Path:
    rng = random.Random(seed)
    path.write_bytes(bytes(rng.randrange(256) for _ in range(n)))
    return path
