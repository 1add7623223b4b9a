"""Page text extraction: pypdf's plain mode, layout mode only for pages where plain mode glues words.

Large PDFs are split across worker processes (each re-opens the PDF from bytes, see pdf_worker.py),
since pypdf's extraction is pure Python and a 300-page contract would otherwise take many seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PARALLEL_MIN_PAGES = 48
WORKERS_ENV = "DOCREADER_PDF_WORKERS"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # so children import this same docreader


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


def extract_serial(reader, indices: range) -> tuple[list[str], list[int]]:
    texts, failed = [], []
    for i in indices:
        try:
            texts.append(page_text(reader.pages[i]))
        except Exception:  # one bad page must not lose the rest of the document
            texts.append("")
            failed.append(i)
    return texts, failed


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
    return extract_serial(reader, range(n_pages))


def _run_worker(data: bytes, password: str | None, start: int, stop: int) -> tuple[list[str], list[int]]:
    header = json.dumps({"start": start, "stop": stop, "password": password}).encode() + b"\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "docreader.loaders.pdf_worker"], input=header + data,
                          capture_output=True, timeout=600, env=env, check=True)
    out = json.loads(proc.stdout)
    return out["texts"], out["failed"]


def _extract_parallel(data: bytes, password: str | None, n_pages: int, workers: int) -> tuple[list[str], list[int]]:
    chunk = -(-n_pages // workers)
    bounds = [(s, min(s + chunk, n_pages)) for s in range(0, n_pages, chunk)]
    texts: list[str] = []
    failed: list[int] = []
    with ThreadPoolExecutor(max_workers=len(bounds)) as pool:  # threads only wait on the children
        for t, f in pool.map(lambda b: _run_worker(data, password, *b), bounds):
            texts.extend(t)
            failed.extend(f)
    if len(texts) != n_pages:
        raise RuntimeError("worker returned the wrong number of pages")
    return texts, failed
