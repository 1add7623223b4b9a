"""Page text extraction: pypdf's plain mode, layout mode only for pages where plain mode glues words.

Large PDFs are split across worker processes (each re-opens the PDF from bytes), since pypdf's
extraction is pure Python and a 300-page contract would otherwise take many seconds.
"""

from __future__ import annotations

import io
import logging
import os
import re
from concurrent.futures import ProcessPoolExecutor

PARALLEL_MIN_PAGES = 48
WORKERS_ENV = "DOCREADER_PDF_WORKERS"


def _space_ratio(text: str) -> float:
    return text.count(" ") / max(len(text), 1)


def page_text(page) -> str:
    """Plain extraction; when it runs words together (almost no spaces), try layout mode instead."""
    text = page.extract_text() or ""
    if len(text) > 200 and _space_ratio(text) < 0.04:
        try:
            layout = page.extract_text(extraction_mode="layout") or ""
        except Exception:
            layout = ""
        layout = "\n".join(re.sub(r" {3,}", "  ", ln.rstrip()) for ln in layout.split("\n")).strip()
        if _space_ratio(layout) > 2 * _space_ratio(text):
            return layout
    return text


def _extract_serial(reader, indices: range) -> tuple[list[str], list[int]]:
    texts, failed = [], []
    for i in indices:
        try:
            texts.append(page_text(reader.pages[i]))
        except Exception:  # one bad page must not lose the rest of the document
            texts.append("")
            failed.append(i)
    return texts, failed


def _worker(data: bytes, password: str | None, start: int, stop: int) -> tuple[list[str], list[int]]:
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted:
        reader.decrypt(password if password is not None else "")
    return _extract_serial(reader, range(start, stop))


def _workers(n_pages: int) -> int:
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw.isdigit():
        return max(1, int(raw))
    if n_pages < PARALLEL_MIN_PAGES:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 8, n_pages // 24))


def extract_pages(reader, data: bytes, password: str | None) -> tuple[list[str], list[int]]:
    """(text per page, indices of pages that failed), in page order."""
    n_pages = len(reader.pages)
    workers = _workers(n_pages)
    if workers > 1:
        try:
            return _extract_parallel(data, password, n_pages, workers)
        except Exception:
            pass  # e.g. no process support here: fall back to one process
    return _extract_serial(reader, range(n_pages))


def _extract_parallel(data: bytes, password: str | None, n_pages: int, workers: int) -> tuple[list[str], list[int]]:
    import multiprocessing

    # "spawn" never forks a parent holding CUDA contexts or threads (torch), at ~0.3 s start-up cost.
    ctx = multiprocessing.get_context("spawn")
    chunk = -(-n_pages // (workers * 2))
    bounds = [(s, min(s + chunk, n_pages)) for s in range(0, n_pages, chunk)]
    texts: list[str] = []
    failed: list[int] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_worker, data, password, s, e) for s, e in bounds]
        for fut in futures:
            t, f = fut.result(timeout=600)
            texts.extend(t)
            failed.extend(f)
    return texts, failed
