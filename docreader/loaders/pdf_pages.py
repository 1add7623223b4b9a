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

from docreader.loaders.budget import Budget

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


def extract_serial(reader, indices: range, budget: Budget | None = None) -> tuple[list[str], list[int]]:
    """(text per page, indices of pages whose extraction failed); stops when the budget's time is up."""
    texts, failed = [], []
    for i in indices:
        if budget is not None:
            budget.check_time(f"extracting page {i + 1}")
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


def extract_pages(reader, data: bytes, password: str | None, budget: Budget) -> tuple[list[str], list[int]]:
    """(text per page, indices of pages that failed), in page order."""
    n_pages = len(reader.pages)
    workers = _workers(n_pages)
    if workers > 1:
        try:
            return _extract_parallel(data, password, n_pages, workers, budget)
        except subprocess.TimeoutExpired:
            raise budget.out_of_time("extracting pages") from None
        except (OSError, ValueError, KeyError, subprocess.SubprocessError):
            pass  # e.g. no process support here: fall back to one process
    return extract_serial(reader, range(n_pages), budget)


def worker_command() -> list[str]:
    """The worker's command line: isolated (-I), with this process's import path minus the current directory.

    `python -m` would put the current directory first on the path, so a json.py lying there would run.
    This docreader comes first, so the child runs the same code as the parent."""
    cwd = Path.cwd().resolve()
    paths = [_PACKAGE_ROOT] + [p for p in sys.path if p and Path(p).resolve() != cwd]
    code = f"import sys; sys.path[:0] = {paths!r}; from docreader.loaders.pdf_worker import main; main()"
    return [sys.executable, "-I", "-c", code]


def _run_worker(data: bytes, password: str | None, start: int, stop: int,
                seconds: float) -> tuple[list[str], list[int]]:
    header = json.dumps({"start": start, "stop": stop, "password": password}).encode() + b"\n"
    proc = subprocess.run(worker_command(), input=header + data, capture_output=True, timeout=max(seconds, 1),
                          check=True)
    out = json.loads(proc.stdout)
    return out["texts"], out["failed"]


def _extract_parallel(data: bytes, password: str | None, n_pages: int, workers: int,
                      budget: Budget | None = None) -> tuple[list[str], list[int]]:
    chunk = -(-n_pages // workers)
    bounds = [(s, min(s + chunk, n_pages)) for s in range(0, n_pages, chunk)]
    texts: list[str] = []
    failed: list[int] = []
    seconds = (budget or Budget("")).seconds_left()
    with ThreadPoolExecutor(max_workers=len(bounds)) as pool:  # threads only wait on the children
        for t, f in pool.map(lambda b: _run_worker(data, password, *b, seconds), bounds):
            texts.extend(t)
            failed.extend(f)
    if len(texts) != n_pages:
        raise RuntimeError("worker returned the wrong number of pages")
    return texts, failed
