"""DOCX (WordprocessingML) with stdlib zipfile + ElementTree: paragraphs, tables, headings, notes.

Body paragraphs become lines; a table becomes one line per row with cells joined by " | ".
Headers, footers, footnotes and endnotes follow the body in a final "headers, footers and notes"
section, as "[Header] …" lines, so nothing the author wrote is silently dropped.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator

from docreader.document import Document
from docreader.loaders.budget import Budget
from docreader.loaders.builder import TextBuilder, section_regions, short_label
from docreader.loaders.safexml import attr, local, parse_xml
from docreader.loaders.safezip import SafeZip

WHAT = "DOCX"
_CONTAINERS = {"sdt", "sdtContent", "customXml", "ins", "smartTag", "moveTo", "body"}
_HEADING_NAME = re.compile(r"^(heading|überschrift|titre|titolo|título|kop)\s*(\d)$", re.I)


_PROPERTIES = {"pPr", "rPr", "tblPr", "sectPr", "del", "moveFrom", "instrText", "fldData"}


_RUN_TEXT = {"tab": "\t", "br": "\n", "cr": "\n", "noBreakHyphen": "-"}  # besides <w:t>


def _walk(root: ET.Element, descend) -> Iterator[ET.Element]:
    """The elements under `root` in document order, entering those whose local name `descend` accepts.
    An explicit stack, not recursion: runs or content controls nested 5,000 deep are legal XML."""
    stack = [iter(root)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            continue
        yield child
        if descend(local(child.tag)):
            stack.append(iter(child))


def paragraph_text(p: ET.Element) -> str:
    """The runs of one paragraph: text, tabs and line breaks, without deleted text or field codes."""
    parts: list[str] = []
    # property elements (tab stops live in pPr/tabs) are neither text nor entered
    for el in _walk(p, lambda n: n not in _PROPERTIES and n != "t" and n not in _RUN_TEXT):
        name = local(el.tag)
        if name == "t" and el.text:
            parts.append(el.text)
        elif name in _RUN_TEXT:
            parts.append(_RUN_TEXT[name])
    return "".join(parts)


def _blocks(container: ET.Element) -> Iterator[ET.Element]:
    """Paragraphs and tables in document order, looking through content controls and revisions."""
    for el in _walk(container, lambda n: n in _CONTAINERS):
        if local(el.tag) in ("p", "tbl"):
            yield el


def table_lines(tbl: ET.Element) -> list[str]:
    lines = []
    for tr in (el for el in tbl.iter() if local(el.tag) == "tr"):
        cells = []
        for tc in (el for el in tr if local(el.tag) in ("tc", "sdt")):
            paras = [paragraph_text(p) for p in tc.iter() if local(p.tag) == "p"]
            cells.append(" ".join(" ".join(t.split()) for t in paras if t.strip()))
        if any(cells):
            lines.append(" | ".join(cells))
    return lines


def _style_names(z: SafeZip, path: str) -> dict[str, str]:
    data = z.read("word/styles.xml")
    if not data:
        return {}
    names = {}
    for style in parse_xml(data, path, WHAT, "word/styles.xml"):
        if local(style.tag) != "style":
            continue
        name_el = next((c for c in style if local(c.tag) == "name"), None)
        sid = attr(style, "styleId")
        if sid and name_el is not None:
            names[sid] = (attr(name_el, "val") or "").lower()
    return names


def heading_level(p: ET.Element, styles: dict[str, str]) -> int | None:
    """1–9 for heading/title paragraphs, from the style (by id or name) or an outline level."""
    ppr = next((c for c in p if local(c.tag) == "pPr"), None)
    if ppr is None:
        return None
    for c in ppr:
        name = local(c.tag)
        if name == "pStyle":
            sid = attr(c, "val") or ""
            for candidate in (styles.get(sid, ""), sid):
                if candidate.lower() in ("title",):
                    return 1
                m = _HEADING_NAME.match(candidate.replace("Heading", "heading ").strip())
                if m:
                    return int(m.group(2))
        elif name == "outlineLvl":
            val = attr(c, "val")
            if val and val.isdigit() and int(val) < 9:
                return int(val) + 1
    return None


def _is_list_item(p: ET.Element) -> bool:
    ppr = next((c for c in p if local(c.tag) == "pPr"), None)
    return ppr is not None and any(local(c.tag) == "numPr" for c in ppr)


def _notes(z: SafeZip, path: str, member: str, kind: str) -> list[str]:
    data = z.read(member)
    if not data:
        return []
    lines = []
    for note in parse_xml(data, path, WHAT, member):
        if attr(note, "type") in ("separator", "continuationSeparator", "continuationNotice"):
            continue
        text = " ".join(" ".join(paragraph_text(p).split()) for p in note.iter() if local(p.tag) == "p").strip()
        if text:
            lines.append(f"[{kind} {attr(note, 'id')}] {text}")
    return lines


def _header_footer_lines(z: SafeZip, path: str) -> list[str]:
    lines: list[str] = []
    seen = set()
    for kind in ("header", "footer"):
        members = sorted(n for n in z.names if re.fullmatch(rf"word/{kind}\d*\.xml", n, re.I))
        for member in members:
            root = parse_xml(z.read(member) or b"", path, WHAT, member)
            text = " / ".join(" ".join(paragraph_text(p).split()) for p in root.iter() if local(p.tag) == "p"
                              and paragraph_text(p).strip())
            if text and (kind, text) not in seen:
                seen.add((kind, text))
                lines.append(f"[{kind.capitalize()}] {text}")
    return lines


def _title(z: SafeZip, path: str) -> str | None:
    data = z.read("docProps/core.xml")
    if not data:
        return None
    root = parse_xml(data, path, WHAT, "docProps/core.xml")
    el = next((c for c in root if local(c.tag) == "title"), None)
    return el.text.strip() if el is not None and el.text and el.text.strip() else None


def load_docx(path: str, data: bytes, unzip_budget: int, budget: Budget | None = None) -> Document:
    z = SafeZip(data, path, WHAT, unzip_budget)
    body_xml = z.read("word/document.xml")
    if body_xml is None:
        raise z.error("word/document.xml missing")
    root = parse_xml(body_xml, path, WHAT, "word/document.xml")
    body = next((c for c in root if local(c.tag) == "body"), None)
    if body is None:
        raise z.error("word/document.xml has no body")
    styles = _style_names(z, path)
    b = TextBuilder(budget)
    starts: list[tuple[int, str, dict]] = []
    for block in _blocks(body):
        if local(block.tag) == "tbl":
            lines = table_lines(block)
            if lines:
                b.separate(2)
                b.write("\n".join(lines))
                b.separate(2)
            continue
        text = paragraph_text(block).strip()
        if not text:
            continue
        level = heading_level(block, styles)
        if level:
            b.separate(2)
            start, _ = b.write(text)
            starts.append((start, short_label(text), {"level": level}))
            b.separate(2)
        else:
            b.separate(1)
            b.write(("- " if _is_list_item(block) else "") + text)
    extra = _header_footer_lines(z, path) + _notes(z, path, "word/footnotes.xml", "Footnote") + \
        _notes(z, path, "word/endnotes.xml", "Endnote")
    if extra:
        b.separate(2)
        start, _ = b.write("\n".join(extra))
        starts.append((start, "headers, footers and notes", {"level": 1}))
    text = b.text().rstrip()
    meta: dict = {"kind": "contract"}
    if title := _title(z, path):
        meta["title"] = title
    return Document(path=path, format="docx", text=text, regions=section_regions(starts, text), meta=meta)
