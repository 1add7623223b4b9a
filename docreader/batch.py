"""Many documents × many questions: the jobs, the rows and the run loop behind `docreader batch` and `extract`.

Each document is one job: a worker loads it, reads it once (the questions after the first take it from the
Reader's prefix cache) and answers every question. Workers only compute; the driver — this process — logs every
answer to the SQLite log and writes every row, so only one process ever writes either. The engines that run the
workers (local processes, Ray actors) are in `docreader.batch_engines`; the output files and `--resume` in
`docreader.batch_io`.
"""

from __future__ import annotations

import glob
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import DocreaderError, first_line

SPAN_CHARS = 200  # a top span's text in a row is cut to this (the whole span is in the log)


@dataclass
class Settings:
    """What every worker needs to answer the same way: the model, its knobs and the generation length."""
    model: str | None = None
    overrides: dict = field(default_factory=dict)  # DSA knobs (engine.Reader's `overrides`)
    max_new_tokens: int = 256
    dense: bool = False
    disk_cache: bool = False  # a batch reads each document once; the disk cache would only evict others
    format: str | None = None
    password: str | None = None
    threads: int | None = 1  # torch threads in each worker


@dataclass
class Job:
    """One document and the questions still to answer about it (1-based numbers in the run's question list)."""
    path: str
    questions: list[tuple[int, str]]
    data: bytes | None = None  # the file's bytes when they are shipped to a worker on another machine


@dataclass
class Result:
    """What a worker sends back for one job: per question (number, Answer or None, error or None, seconds),
    or `error` when the document itself failed (it could not be loaded, or the worker died)."""
    path: str
    answers: list[tuple[int, object, str | None, float]] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)  # per answer: CPU seconds of the worker (all its threads)
    error: str | None = None
    worker: str = ""
    seconds: float = 0.0


# -- inputs ---------------------------------------------------------------------------------------------------

def expand_inputs(patterns: Iterable[str]) -> list[str]:
    """Files named, files under named directories (recursively, hidden ones skipped) and glob matches
    (`**` recurses), each once, in the order given (sorted within a directory or a glob). A name that is
    neither a file, a directory nor a glob with matches is an error, before anything runs."""
    out: list[str] = []
    for pat in patterns:
        p = Path(pat)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            found = [pat]
        elif glob.has_magic(pat):
            found = sorted(f for f in glob.glob(pat, recursive=True) if os.path.isfile(f))
        else:
            raise DocreaderError("no such file or directory", path=pat)
        if not found:
            raise DocreaderError("no documents match" if glob.has_magic(pat) else "no files in this directory", path=pat)
        out += [f for f in found if f not in out]
    return out


def read_questions(questions: list[str], questions_file: str | None) -> list[str]:
    """Each -q, then each non-empty line of --questions FILE (as `ask` reads them): at least one, none empty."""
    if not questions and questions_file is None:
        raise DocreaderError("give at least one -q QUESTION or --questions FILE")
    from .cli import _questions
    return _questions(None, None, questions, questions_file)


# -- the worker's side ----------------------------------------------------------------------------------------

def make_reader(settings: Settings):
    """A worker's Reader (the model loads on its first question); torch gets the worker's thread budget."""
    import torch
    torch.set_num_threads(max(1, settings.threads))
    from .engine import Reader
    return Reader(settings.model, settings.overrides, disk_cache=settings.disk_cache)


def _load(job: Job, settings: Settings):
    from .loaders import load
    if job.data is None:
        return load(job.path, format=settings.format, password=settings.password, cache=settings.disk_cache)
    import tempfile
    with tempfile.TemporaryDirectory(prefix="docreader-batch-") as tmp:  # the name keeps its suffix for sniffing
        local = Path(tmp) / (Path(job.path).name or "document")
        local.write_bytes(job.data)
        try:
            doc = load(str(local), format=settings.format, password=settings.password, cache=settings.disk_cache)
        except DocreaderError as e:  # named as the user named it, not as the temporary copy
            raise DocreaderError(str(e).replace(str(local), job.path)) from None
    doc.path = job.path  # named as the user named it, in rows and in the log
    return doc


def answer_job(reader, job: Job, settings: Settings, worker: str = "") -> Result:
    """Load one document and answer its questions without logging (the driver logs). A document that cannot
    be loaded, or a question that fails, becomes an error in the result, never an exception."""
    t0, c0 = time.perf_counter(), time.process_time()  # CPU time: a cost that other load on the machine hides less
    res = Result(job.path, worker=worker)
    try:
        doc = _load(job, settings)
    except Exception as e:  # noqa: BLE001 - any failure is this document's, the run goes on
        res.error = _describe(e).removeprefix(f"{job.path}: ")  # the row names the document already
        res.seconds = time.perf_counter() - t0
        return res
    for qno, question in job.questions:
        t1 = time.perf_counter()
        try:
            ans = reader.ask(doc, question, max_new_tokens=settings.max_new_tokens, dense=settings.dense, log=False)
            res.answers.append((qno, ans, None, time.perf_counter() - t1))
        except Exception as e:  # noqa: BLE001
            res.answers.append((qno, None, _describe(e), time.perf_counter() - t1))
        res.cpu_s.append(round(time.process_time() - c0, 3))  # the first answer's includes loading the document
        c0 = time.process_time()
    doc.__dict__.pop("_tokens", None)  # the tokens need not travel back with the answers
    res.seconds = time.perf_counter() - t0
    return res


def _describe(e: BaseException) -> str:
    """One line: a DocreaderError says it all; anything else also names its type and where it happened."""
    if isinstance(e, DocreaderError):
        return str(e)
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(e).__name__}: {first_line(e)}{where}"


# -- rows -----------------------------------------------------------------------------------------------------

def answer_row(ans, path: str, qno: int, worker: str, seconds: float, top_spans: int) -> dict:
    """One output row from an engine.Answer (its `id` set when it was logged)."""
    js = ans.to_json()
    quotes = [{k: q.get(k) for k in ("text", "verified", "page", "label")} for q in js["quotes"]]
    first = next((q for q in quotes if q["verified"]), None)
    prov = js.get("provenance") or {}
    t = js["timings"]
    return {**_base(path, qno, ans.question, worker),
            "document_sha256": js["document"]["sha256"], "format": js["document"]["format"],
            "document_tokens": js["tokens"]["document"],
            "answer": js["answer"], "short_answer": js["short_answer"], "absent": js["absent"],
            "stop_reason": js["stop_reason"],
            "quote": first["text"] if first else None, "quote_page": first["page"] if first else None,
            "quote_label": first["label"] if first else None, "quotes": quotes,
            "spans": [{"rank": s["rank"], "score": s["score"], "label": s.get("label"), "page": s.get("page"),
                       "text": " ".join(s["text"].split())[:SPAN_CHARS]} for s in js["spans"][:top_spans]],
            "prompt_tokens": js["tokens"]["prompt"], "new_tokens": js["tokens"]["new"],
            "load_s": t.get("load_s"), "prefill_s": t.get("prefill_s"), "decode_s": t.get("decode_s"),
            "prefix_cache": t.get("prefix_cache"), "seconds": round(seconds, 3),
            "model": js["model"], "mode": js["mode"], **weights_fields(prov), "answer_id": js["id"]}


def weights_fields(prov: dict) -> dict:
    """Which weights answered: the indexer's sha256 (or "untrained, seed N"), the adapter's, the code's."""
    ix, ad = prov.get("indexer") or {}, prov.get("adapter") or {}
    indexer = ix.get("sha256") if ix.get("trained") else (f"untrained, seed {ix['seed']}" if "seed" in ix else None)
    return {"indexer": indexer, "adapter": ad.get("sha256"),
            "code": (prov.get("code") or {}).get("code_sha256")}


def error_row(path: str, qno: int | None, question: str | None, error: str, worker: str, seconds: float) -> dict:
    """A failure as a row: the document's (qno None: it could not be read at all) or one question's."""
    return {**_base(path, qno, question, worker), "error": error, "seconds": round(seconds, 3)}


def _base(path: str, qno: int | None, question: str | None, worker: str) -> dict:
    return {"document": path, "question_no": qno, "question": question, "error": None, "worker": worker}


# -- the run --------------------------------------------------------------------------------------------------

@dataclass
class Summary:
    documents: int = 0  # documents finished this run
    rows: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (document, error) — a document or a question
    seconds: float = 0.0


def run(jobs: list[Job], engine, on_row: Callable[[dict], None], save: Callable[[object], int | None] | None,
        top_spans: int = 3, progress: Callable[[Result, Summary], None] | None = None,
        summary: Summary | None = None) -> Summary:
    """Run every job on `engine` (results in any order), log each answer with `save` (-> its id; None: no
    log) and hand each row to `on_row` as soon as its document is done. Failures are rows, never fatal.
    `summary` is filled in as documents finish (so an interrupted run can still report)."""
    summary, t0 = summary or Summary(), time.perf_counter()
    questions = {job.path: dict(job.questions) for job in jobs}
    for res in engine.run(jobs):
        rows = []
        if res.error is not None:
            rows.append(error_row(res.path, None, None, res.error, res.worker, res.seconds))
            summary.failures.append((res.path, res.error))
        for i, (qno, ans, err, secs) in enumerate(res.answers):
            if ans is not None and save is not None:
                try:
                    ans.id = save(ans)
                except DocreaderError as e:  # the log refused it: the answer is still a row, and said so
                    err = f"not logged: {e}"
            cpu = {"cpu_s": res.cpu_s[i] if i < len(res.cpu_s) else None}
            if ans is None:
                rows.append(error_row(res.path, qno, questions[res.path].get(qno), err, res.worker, secs) | cpu)
            else:
                rows.append(answer_row(ans, res.path, qno, res.worker, secs, top_spans) | {"error": err} | cpu)
            if err is not None:
                summary.failures.append((res.path, f"question {qno}: {err}"))
        for row in rows:
            on_row(row)
        summary.documents += 1
        summary.rows += len(rows)
        summary.seconds = time.perf_counter() - t0
        if progress is not None:
            progress(res, summary)
    summary.seconds = time.perf_counter() - t0
    return summary


class Progress:
    """Documents done, answers, failures, elapsed time and ETA on stderr: one redrawn line on a terminal, a
    line per document elsewhere (a CI log, a pipe)."""

    WIDTH = 24

    def __init__(self, total_docs: int, stream=None) -> None:
        self.total = total_docs
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()

    def __call__(self, res: Result, s: Summary) -> None:
        done, elapsed = s.documents, time.monotonic() - self.started
        eta = f", ETA {_clock(elapsed * (self.total - done) / done)}" if 0 < done < self.total else ""
        failed = f", {len(s.failures)} failed" if s.failures else ""
        status = f"{done}/{self.total} documents, {s.rows} rows{failed}, {_clock(elapsed)}{eta}"
        if self.tty:
            fill = self.WIDTH * done // max(1, self.total)
            self.stream.write(f"\r[{'#' * fill}{'.' * (self.WIDTH - fill)}] {status}\x1b[K")
            if done >= self.total:
                self.stream.write("\n")
        else:
            what = f"error: {res.error}" if res.error else f"{len(res.answers)} answers in {res.seconds:.0f} s"
            from .terminal import printable
            self.stream.write(printable(f"[{done}/{self.total}] {res.path}: {what} ({status})", one_line=True) + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
