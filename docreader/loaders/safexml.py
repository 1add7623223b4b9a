"""Parsing XML from untrusted archives: no entity declarations (expansion bombs), errors as DocreaderError."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.parsers import expat

from docreader.errors import DocreaderError


class _EntityDeclared(Exception):
    """Raised by the expat handler at the first entity declaration."""


def _refuse(*_args: object) -> None:
    raise _EntityDeclared


def parse_xml(data: bytes, path: str, what: str, member: str) -> ET.Element:
    """The root element; refuses entity declarations, which OOXML, OPF and XHTML never need.

    expat reports each declaration wherever it is in the file (a scan of the first 64 KiB missed one
    placed after a 70 kB comment); an external DTD without an internal subset is harmless and allowed."""
    scan = expat.ParserCreate()  # a first pass with bare expat: ElementTree's C parser hides its handlers
    scan.EntityDeclHandler = scan.UnparsedEntityDeclHandler = _refuse
    try:
        scan.Parse(data, True)
        return ET.fromstring(data)
    except _EntityDeclared:
        raise DocreaderError(f"corrupt {what} ({member} declares XML entities — refusing to expand them)",
                             path=path) from None
    except (expat.ExpatError, ET.ParseError) as e:
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
