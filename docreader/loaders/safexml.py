"""Parsing XML from untrusted archives: no DTDs (entity expansion bombs), errors as DocreaderError."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from docreader.errors import DocreaderError

_DTD = re.compile(rb"<!DOCTYPE[^>\[]*\[|<!ENTITY", re.I)


def parse_xml(data: bytes, path: str, what: str, member: str) -> ET.Element:
    """The root element; refuses inline DTDs, which OOXML and OPF never need."""
    if _DTD.search(data[:65536]):
        raise DocreaderError(f"corrupt {what} ({member} declares XML entities — refusing to expand them)", path=path)
    try:
        return ET.fromstring(data)
    except ET.ParseError as e:
        raise DocreaderError(f"corrupt {what} (bad XML in {member}: {e})", path=path) from None


def local(tag: object) -> str:
    """A tag or attribute name without its {namespace}."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def attr(el: ET.Element, name: str) -> str | None:
    """An attribute by local name, whatever its namespace."""
    for key, value in el.attrib.items():
        if local(key) == name:
            return value
    return None
