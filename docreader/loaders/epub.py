"""EPUB: container.xml → OPF → spine order; each XHTML item's visible text; chapters from the TOC.

Chapter titles come from the EPUB 3 nav document or the EPUB 2 NCX (including entries that point
at anchors inside one file); items the TOC does not name fall back to their first heading.
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET
from urllib.parse import unquote, urldefrag

from docreader.document import Document
from docreader.errors import DocreaderError
from docreader.loaders.budget import Budget
from docreader.loaders.builder import TextBuilder, section_regions, short_label
from docreader.loaders.encoding import declared_charset, decode_text
from docreader.loaders.html_text import extract
from docreader.loaders.safexml import attr, local, parse_xml
from docreader.loaders.safezip import SafeZip

WHAT = "EPUB"
XHTML_TYPES = {"application/xhtml+xml", "text/html", "application/xml", "text/x-oeb1-document"}


def _resolve(base: str, href: str) -> tuple[str, str]:
    """(zip member path, fragment) of an href relative to the file that contains it."""
    url, frag = urldefrag(href)
    return posixpath.normpath(posixpath.join(posixpath.dirname(base), unquote(url))), frag


def _text(el: ET.Element) -> str:
    return " ".join("".join(el.itertext()).split())


def _opf_path(z: SafeZip, path: str) -> str:
    container = z.read("META-INF/container.xml")
    if container is None:
        opfs = [n for n in z.names if n.lower().endswith(".opf")]
        if not opfs:
            raise z.error("META-INF/container.xml missing")
        return opfs[0]
    root = parse_xml(container, path, WHAT, "META-INF/container.xml")
    for el in root.iter():
        if local(el.tag) == "rootfile" and attr(el, "full-path"):
            return attr(el, "full-path") or ""
    raise z.error("container.xml names no rootfile")


def _nav_toc(z: SafeZip, path: str, nav_path: str) -> list[tuple[str, str, str]]:
    data = z.read(nav_path)
    if not data:
        return []
    page = data.decode("utf-8", "replace")
    try:  # the nav is XHTML, well-formed as EPUB requires; without it chapters fall back to headings
        root = parse_xml(page.encode("utf-8"), path, WHAT, nav_path)
    except DocreaderError:
        return []
    navs = [el for el in root.iter() if local(el.tag) == "nav"]
    toc = next((n for n in navs if attr(n, "type") == "toc"), navs[0] if navs else None)
    if toc is None:
        return []
    out = []
    for a in toc.iter():
        if local(a.tag) == "a" and attr(a, "href"):
            member, frag = _resolve(nav_path, attr(a, "href") or "")
            out.append((member, frag, _text(a)))
    return out


def _ncx_toc(z: SafeZip, path: str, ncx_path: str) -> list[tuple[str, str, str]]:
    data = z.read(ncx_path)
    if not data:
        return []
    root = parse_xml(data, path, WHAT, ncx_path)
    out = []
    for point in root.iter():
        if local(point.tag) != "navPoint":
            continue
        label = next((el for el in point.iter() if local(el.tag) == "text"), None)
        content = next((el for el in point if local(el.tag) == "content"), None)
        if content is not None and attr(content, "src"):
            member, frag = _resolve(ncx_path, attr(content, "src") or "")
            out.append((member, frag, _text(label) if label is not None else ""))
    return out


def load_epub(path: str, data: bytes, unzip_budget: int, budget: Budget | None = None) -> Document:
    z = SafeZip(data, path, WHAT, unzip_budget)
    opf_path = _opf_path(z, path)
    opf_data = z.read(opf_path)
    if opf_data is None:
        raise z.error(f"package file {opf_path} missing")
    opf = parse_xml(opf_data, path, WHAT, opf_path)
    manifest: dict[str, tuple[str, str, str]] = {}  # id -> (member, media type, properties)
    spine_ids: list[str] = []
    toc_id = None
    meta: dict = {"kind": "book"}
    for el in opf.iter():
        name = local(el.tag)
        if name == "item" and attr(el, "id") and attr(el, "href"):
            member, _ = _resolve(opf_path, attr(el, "href") or "")
            manifest[attr(el, "id") or ""] = (member, attr(el, "media-type") or "", attr(el, "properties") or "")
        elif name == "itemref" and attr(el, "idref"):
            spine_ids.append(attr(el, "idref") or "")
        elif name == "spine":
            toc_id = attr(el, "toc")
        elif name in ("title", "creator") and el.text and el.text.strip() and name not in meta:
            meta["title" if name == "title" else "author"] = el.text.strip()
    toc: list[tuple[str, str, str]] = []
    nav = next((m for m, _, props in manifest.values() if "nav" in props.split()), None)
    if nav:
        toc = _nav_toc(z, path, nav)
    if not toc:
        ncx = manifest.get(toc_id or "") or next((v for v in manifest.values() if v[1] == "application/x-dtbncx+xml"), None)
        if ncx:
            toc = _ncx_toc(z, path, ncx[0])
    titles: dict[str, list[tuple[str, str]]] = {}
    for member, frag, title in toc:
        if title:
            titles.setdefault(member, []).append((frag, title))

    b = TextBuilder(budget)
    starts: list[tuple[int, str, dict]] = []
    items = 0
    for idref in spine_ids:
        if budget is not None:
            budget.check_time("reading the spine")
        if idref not in manifest:
            continue
        member, media, _ = manifest[idref]
        if media and media not in XHTML_TYPES:
            continue
        raw = z.read(member)
        if raw is None:
            continue
        html, _ = decode_text(raw, path, declared_charset(raw))
        page = extract(html)
        if not page.text.strip():
            continue
        b.separate(2)
        base = len(b)
        b.write(page.text)
        items += 1
        named = titles.get(member, [])
        for frag, title in named:
            offset = page.anchors.get(frag, 0) if frag else 0
            starts.append((base + min(offset, len(page.text) - 1), short_label(title), {"item": member}))
        if not named and (page.headings or page.title):
            title = page.headings[0][2] if page.headings else page.title
            offset = page.headings[0][0] if page.headings else 0
            starts.append((base + min(offset, len(page.text) - 1), short_label(title), {"item": member}))
    if not spine_ids:
        raise z.error("the OPF spine lists no content")
    text = b.text()
    meta["items"] = items
    return Document(path=path, format="epub", text=text, regions=section_regions(starts, text), meta=meta)
