"""Bytes to text for the text formats: BOMs, strict UTF-8, a declared charset, then a guess."""

from __future__ import annotations

import codecs
import re

from docreader.errors import DocreaderError

BINARY = "not a supported document (binary data)"
_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
]
# Control (except \t\n\v\f\r and ESC), private-use, surrogate and replacement characters: the marks of binary data
_BAD_CHARS = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f\ud800-\udfff\ue000-\uf8ff\ufffd"
                        "\U000f0000-\U0010ffff]")
_WINDOW = 65536


def normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _bom_encoding(data: bytes) -> str | None:
    for bom, name in _BOMS:  # UTF-32 LE before UTF-16 LE: its BOM starts with the UTF-16 one
        if data.startswith(bom):
            return name
    return None


def _utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 text without a BOM shows as zero bytes in every other position (for Latin scripts)."""
    sample = data[:4096]
    if len(sample) < 4:
        return None
    half = len(sample) // 2
    odd_zero = sum(1 for b in sample[1::2] if b == 0) / half
    even_zero = sum(1 for b in sample[0::2] if b == 0) / half
    if odd_zero > 0.4 and even_zero < 0.05:
        return "utf-16-le"
    if even_zero > 0.4 and odd_zero < 0.05:
        return "utf-16-be"
    return None


def looks_binary(text: str) -> bool:
    """Decoded text with over 1% control or replacement characters in any 64 KiB window is not a document.

    Every window is checked, not just the first: binary data after 64 KiB of text is binary all the same."""
    last = max(len(text) - _WINDOW, 0)  # the final window ends at the end of the text, and is full if it can be
    for start in [*range(0, last, _WINDOW), last]:
        end = min(start + _WINDOW, len(text))
        if len(_BAD_CHARS.findall(text, start, end)) > (end - start) / 100:
            return True
    return False


def _try(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


_LATIN_FAMILY = re.compile(r"^(cp125[0-8]|iso8859_\d+|latin_1|mac_\w+|cp8\d\d)$")
_ODD_IN_WORD = re.compile(r"(?<=[^\W\d_])[^\w\s'’\-.,;:!?\"“”()](?=[^\W\d_])")


def _oddities(text: str) -> int:
    """Symbols wedged between letters ("Za¿ó³æ"): the mark of a wrong single-byte code page."""
    return len(_ODD_IN_WORD.findall(text[:65536]))


def _mostly_ascii_letters(text: str) -> bool:
    """Western European prose is mostly unaccented letters; Cyrillic or Greek read as 1252 is not."""
    letters = [ch for ch in text[:65536] if ch.isalpha()]
    return not letters or sum(ch.isascii() for ch in letters) / len(letters) > 0.7


def _guess(data: bytes) -> tuple[str, str] | None:
    """charset-normalizer's guess, but Windows-1252 where it reads at least as well.

    Among Latin code pages the statistics barely differ, and charset-normalizer often picks a Baltic
    or Central European one for French or German text; 1252 is by far the most common legacy encoding.
    """
    from charset_normalizer import from_bytes  # imported lazily: only non-UTF-8 input needs it

    results = from_bytes(data)
    best = results.best()
    if best is None or best.encoding is None:
        return None
    text, encoding = str(best), best.encoding
    if encoding != "cp1252" and _LATIN_FAMILY.match(encoding):
        western = _try(data, "cp1252")
        if western is not None and _mostly_ascii_letters(western) and _oddities(western) <= _oddities(text):
            return western, "cp1252"
    return text, encoding


def decode_text(data: bytes, path: str, declared: str | None = None) -> tuple[str, str]:
    """Return (text, encoding) with newlines normalised; raise DocreaderError for binary data."""
    candidates = [_bom_encoding(data), _utf16_without_bom(data)]
    for enc in candidates:
        if enc:
            text = _try(data, enc)
            if text is not None:
                return _checked(normalise_newlines(text.lstrip("\ufeff")), path), enc
    if b"\x00" in data:  # anywhere: a NUL after the first 64 KiB is binary too
        raise DocreaderError(BINARY, path=path)
    for enc in ("utf-8", declared):
        if enc:
            text = _try(data, enc)
            if text is not None:
                return _checked(normalise_newlines(text), path), enc
    guess = _guess(data)
    if guess is None:
        raise DocreaderError(BINARY if _mostly_unprintable(data) else
                             "cannot detect the text encoding (save it as UTF-8)", path=path)
    text, enc = guess
    return _checked(normalise_newlines(text.lstrip("\ufeff")), path), enc


def _mostly_unprintable(data: bytes) -> bool:
    sample = data[:65536]
    bad = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13, 27))
    return bad / max(len(sample), 1) > 0.01


def _checked(text: str, path: str) -> str:
    if looks_binary(text):
        raise DocreaderError(BINARY, path=path)
    return text


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


def declared_charset(data: bytes) -> str | None:
    """The charset an HTML/XML file declares in its first 4 kB, if Python knows it."""
    head = data[:4096]
    m = _META_CHARSET.search(head) or re.search(rb"""<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""", head)
    if not m:
        return None
    name = m.group(1).decode("ascii", "ignore")
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None
