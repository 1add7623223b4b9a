"""PDF via pypdf: one page region per page, printed page labels, clear errors for locked or broken files."""

from __future__ import annotations

import io
import logging
import re

from docreader.document import Document
from docreader.errors import DocreaderError, one_line
from docreader.loaders.budget import Budget
from docreader.loaders.builder import TextBuilder
from docreader.loaders.pdf_pages import extract_pages
from docreader.loaders.pdf_printed import printed_numbers
from docreader.loaders.pdf_work import check_work

PAGE_SEPARATOR = "\n\n"
EMPTY_PAGE = "[no text on this page]"
UNDECODABLE_PAGE = "[this page could not be decoded]"
log = logging.getLogger("docreader")


def _reader(data: bytes, path: str):
    from pypdf import PdfReader

    try:
        return PdfReader(io.BytesIO(data), strict=False)
    except Exception as e:  # pypdf raises many types for malformed input
        raise DocreaderError(f"corrupt PDF ({_why(e)})", path=path) from None


def _why(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:120]


def _unlock(reader, path: str, password: str | None) -> None:
    """Decrypt with the given password, or with the empty one that viewers try silently."""
    from pypdf import PasswordType
    from pypdf.errors import DependencyError

    if not reader.is_encrypted:
        return
    try:
        result = reader.decrypt(password if password is not None else "")
    except DependencyError:
        raise DocreaderError("encrypted PDF needs the 'cryptography' package (pip install cryptography)",
                             path=path) from None
    except Exception as e:
        raise DocreaderError(f"cannot decrypt PDF ({_why(e)})", path=path) from None
    if result == PasswordType.NOT_DECRYPTED:
        raise DocreaderError("wrong password" if password is not None else "encrypted PDF — pass --password",
                             path=path)


def _truncated(data: bytes) -> bool:
    """A download cut short loses the trailer; every complete PDF ends with %%EOF (give or take junk)."""
    return b"%%EOF" not in data[-4096:]


def page_labels(reader) -> list[str] | None:
    """The printed page labels ("iii", "A-1"), or None when the PDF defines none."""
    try:
        root = reader.trailer["/Root"]
        if "/PageLabels" not in root:
            return None
        labels = list(reader.page_labels)
    except Exception:
        return None
    return labels if len(labels) == len(reader.pages) else None


def page_name(i: int, labels: list[str] | None, printed: list[str | None]) -> tuple[str, str]:
    """(page_label, the label shown) of page index i: the PDF's own label ("p. iii"); else the number printed
    on the page, with its index for a viewer's page box ("p. 14 (PDF page 10)"); else the index ("p. 10"),
    spelt "PDF page 10" in a document where other pages print numbers, so it is not read as a printed one."""
    if labels:
        return labels[i], f"p. {labels[i]}"
    index = str(i + 1)
    number = printed[i]
    if number is None:
        return index, f"PDF page {index}" if any(printed) else f"p. {index}"
    return number, f"p. {number}" if number == index else f"p. {number} (PDF page {index})"


def clean_page(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _page_list(pages: list[int]) -> str:
    shown = ", ".join(str(p) for p in pages[:20])
    return shown + (f" and {len(pages) - 20} more" if len(pages) > 20 else "")


def load_pdf(path: str, data: bytes, password: str | None = None, budget: Budget | None = None) -> Document:
    if b"%PDF-" not in data[:1024]:
        raise DocreaderError("not a PDF (no %PDF- header)", path=path)
    if _truncated(data):
        raise DocreaderError("truncated PDF (no %%EOF marker — was the download cut short?)", path=path)
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # pypdf warns loudly about harmless quirks
    reader = _reader(data, path)
    _unlock(reader, path, password)
    try:
        n_pages = len(reader.pages)
    except Exception as e:
        raise DocreaderError(f"corrupt PDF ({_why(e)})", path=path) from None
    if n_pages == 0:
        raise DocreaderError("PDF has no pages", path=path)
    labels = page_labels(reader)
    budget = budget or Budget(path)
    undecodable = check_work(reader, path)
    texts, failed = extract_pages(reader, data, password, budget)
    texts = [clean_page(t) for t in texts]
    bad = sorted(set(undecodable) | set(failed))
    if not any(texts):
        if bad and len(bad) == n_pages:
            raise DocreaderError("corrupt PDF (no page could be read)", path=path)
        raise DocreaderError("no extractable text — scanned?", path=path)
    b = TextBuilder(budget)
    printed = [None] * n_pages if labels else printed_numbers(texts)
    for i, page_text in enumerate(texts):
        if i:
            b.write(PAGE_SEPARATOR)
        start, end = b.write(page_text or (UNDECODABLE_PAGE if i in bad else EMPTY_PAGE))
        label, name = page_name(i, labels, printed)
        b.add_region("page", start, end, name, {"page": i + 1, "page_label": label})
    meta: dict = {"kind": "contract", "pages": n_pages}
    blank = [i + 1 for i, t in enumerate(texts) if not t and i not in bad]
    if blank:
        meta["pages_without_text"] = blank
    if bad:  # kept with the document, so an answer can say its source was incomplete
        meta["undecodable_pages"] = [i + 1 for i in bad]
        many = len(bad) > 1
        log.warning("warning: %s: could not decode page%s %s; %s text is missing", one_line(path),
                    "s" if many else "", _page_list(meta["undecodable_pages"]), "their" if many else "its")
    try:
        info = reader.metadata
        if info and info.title and str(info.title).strip():
            meta["title"] = str(info.title).strip()
    except Exception:
        pass
    return Document(path=path, format="pdf", text=b.text(), regions=b.sorted_regions(), meta=meta)
