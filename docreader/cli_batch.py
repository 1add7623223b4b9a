"""`docreader batch` (every question about every document, one row each) and `docreader extract` (a clause
table). Registered on the main app by `register(app)`.

Exit codes: 0 all answered; 1 bad input (nothing run, nothing written); 2 finished, but some documents or
questions failed (their error rows are in the output and listed at the end); 130 interrupted (the rows so far
are written: `--resume` continues).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from . import batch, batch_engines, batch_io, cli_setup, extract, models as models_mod, store
from .errors import DocreaderError
from .terminal import friendly, in_range, say

KNOB_MAX = 2**31 - 1
FAILED_EXIT = 2

Questions = typer.Option([], "--question", "-q", help="A question (repeat for several).")
QuestionsFile = typer.Option(None, "--questions", help="A file of questions, one a line.")
Workers = typer.Option(1, "--workers", "-w", help="Workers, each with its own model (local: processes; 1: this one).")
Engine = typer.Option("local", "--engine", help="local (processes on this machine) or ray (a Ray cluster).")
Address = typer.Option(None, "--address", help="The Ray cluster (e.g. 10.0.0.5:6379 or auto); default: a Ray "
                       "instance started on this machine for the run.")
Ship = typer.Option("bytes", "--ship", help="Ray: send each document's bytes (bytes) or only its path (paths: the "
                    "workers share this file system).")
Threads = typer.Option(None, "--threads", help="Torch threads per worker (default: the cores shared out among the "
                       "workers, at least 1).")
ModelOpt = typer.Option(None, "--model", "-m", help="As for `ask` (default: the default model).")
Dense = typer.Option(False, "--dense", help="Dense attention (same model), for comparison.")
NoLog = typer.Option(False, "--no-log", help="Do not store the answers in the SQLite log.")
Cache = typer.Option(False, "--cache", help="Use the document cache on disk too (off by default: a batch reads "
                     "each document once, and its entries would evict the ones your `ask`s use).")
Resume = typer.Option(False, "--resume", help="Continue the run that wrote --out: skip the rows it (or the log) "
                      "has, try failed ones again.")
Force = typer.Option(False, "--force", help="Replace --out if it exists.")
Fmt = typer.Option(None, "--format", help="Override format detection for every document.")
Pwd = typer.Option(None, "--password", help="Password of encrypted PDFs.")


def _settings(model, max_new_tokens: int, dense: bool, cache: bool, fmt, password, workers: int, engine: str,
              threads: Optional[int], address: Optional[str], ship: str) -> batch.Settings:
    """Every option checked before anything is written or loaded."""
    in_range("--max-new-tokens", max_new_tokens, 1, KNOB_MAX)
    in_range("--workers", workers, 1, 1024)
    in_range("--threads", threads, 1, 1024)
    if engine not in ("local", "ray"):
        raise DocreaderError(f"unknown --engine {engine!r} (local or ray)")
    if ship not in ("bytes", "paths"):
        raise DocreaderError(f"unknown --ship {ship!r} (bytes or paths)")
    if address is not None and engine != "ray":
        raise DocreaderError("--address needs --engine ray")
    settings = batch.Settings(model, {}, max_new_tokens, dense, cache, fmt, password)
    settings.threads = threads  # None: chosen in `_run`, once the engine is known
    return settings


def _run(paths: list[str], questions: list[str], settings: batch.Settings, out: batch_io.Output | None,
         workers: int, engine: str, address, ship: str, no_log: bool, resume: bool, top_spans: int = 3):
    """The run both commands share: checks first (nothing starts on bad input), then the jobs; -> (rows, summary,
    interrupted). Rows go to `out` as each document finishes (or to memory without one)."""
    models_mod.preflight(settings.model)
    if not no_log:
        store.open_db(write=True)
    numbered = list(enumerate(questions, 1))
    done = out.done() if out else set()
    started = (out.started() if out else None) or store.now()
    kept: list[dict] = []
    add = out.add if out else kept.append
    if out and resume and not no_log:
        for row in batch_io.rows_from_log(paths, numbered, models_mod.resolve(settings.model)[0], started, done):
            add(row)
    jobs = [batch.Job(p, [(n, q) for n, q in numbered if (p, q) not in done]) for p in paths]
    jobs = [j for j in jobs if j.questions]
    skipped = len(paths) - len(jobs)
    if skipped:
        say(f"resuming: {skipped} of {len(paths)} documents already done", err=True)
    if not jobs:  # a resumed run with nothing left: no model, no engine
        return (out.rows() if out else kept), batch.Summary(), False, 0
    cli_setup.ensure_default_model(settings.model)
    if engine == "local" and workers == 1:  # this process: ask's default (the cores not busy right now)
        settings.threads = cli_setup.use_threads(settings.threads)
    else:
        settings.threads = batch_engines.thread_budget(workers, settings.threads)
    eng = batch_engines.make_engine(engine, settings, workers, address, ship)
    saver = None if no_log else _saver(settings)
    interrupted, summary = False, batch.Summary()
    stop_on_term = _term_as_interrupt()
    try:
        batch.run(jobs, eng, lambda r: add(r | {"run_started": started}), saver, top_spans,
                            batch.Progress(len(jobs)), summary=summary)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        eng.close()
        stop_on_term()
    rows = out.rows() if out else kept
    return rows, summary, interrupted, len(jobs)


def _term_as_interrupt():
    """SIGTERM (a scheduler stopping the job, `kill`) ends the run as Ctrl-C does: rows written, workers
    stopped, `--resume` continues. -> a function that restores the previous handler."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _saver(settings: batch.Settings):
    from .engine import Reader
    reader = Reader(settings.model, settings.overrides)  # only its `save`: the model is never loaded here
    return reader.save


def _report(summary: batch.Summary, docs: int, interrupted: bool, wrote: str) -> None:
    rate = f", {summary.documents / summary.seconds * 3600:.1f} documents/hour" if summary.seconds > 0 else ""
    say(f"{summary.documents}/{docs} documents, {summary.rows} rows in {summary.seconds:.0f} s{rate}; {wrote}",
        err=True)
    if summary.failures:
        say(f"{len(summary.failures)} failed (error rows in the output):", err=True)
        for path, err in summary.failures:
            say(f"  {path}: {err}", err=True)
    if interrupted:
        say("interrupted: the rows so far are written; run the same command with --resume to continue", err=True)
        raise typer.Exit(130)
    if summary.failures:
        raise typer.Exit(FAILED_EXIT)


def batch_cmd(paths: list[str] = typer.Argument(..., help="Documents, directories or globs (quote ** globs)."),
              question: list[str] = Questions, questions_file: Optional[str] = QuestionsFile,
              out: str = typer.Option(..., "--out", "-o", help="results.jsonl, .csv or .parquet"),
              resume: bool = Resume, force: bool = Force, workers: int = Workers, engine: str = Engine,
              address: Optional[str] = Address, ship: str = Ship, threads: Optional[int] = Threads,
              model: Optional[str] = ModelOpt,
              max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n", help="Most tokens per answer."),
              dense: bool = Dense, spans: int = typer.Option(3, "--spans", help="Top spans kept in each row."),
              no_log: bool = NoLog, cache: bool = Cache, format: Optional[str] = Fmt, password: Optional[str] = Pwd):
    """Answer every question about every document: one row per document × question (answer, verified quotes with
    pages, top spans, timings, model and weights, error). Each document is read once; answers are logged."""
    in_range("--spans", spans, 0, 1000)
    qs = batch.read_questions(question, questions_file)
    docs = batch.expand_inputs(paths)
    settings = _settings(model, max_new_tokens, dense, cache, format, password, workers, engine, threads, address, ship)
    output = batch_io.Output(out, resume=resume, force=force)
    rows, summary, interrupted, n = _run(docs, qs, settings, output, workers, engine, address, ship, no_log,
                                         resume, spans)
    written = output.finish()
    _report(summary, n, interrupted, f"{written} rows in {out}")


def extract_cmd(paths: list[str] = typer.Argument(None, help="Contracts, directories or globs."),
                clauses: str = typer.Option("governing-law,expiration-date,renewal-term,anti-assignment,"
                                            "termination-for-convenience", "--clauses", "-c",
                                            help="Clause keys, comma-separated (or `all`: CUAD's 41)."),
                list_clauses: bool = typer.Option(False, "--list-clauses", help="List the clause keys and exit."),
                out: Optional[str] = typer.Option(None, "--out", "-o", help="The table: .csv, .parquet or .jsonl "
                                                  "(default: printed)."),
                html_out: Optional[str] = typer.Option(None, "--html", help="Also a readable HTML table."),
                rows_out: Optional[str] = typer.Option(None, "--rows", help="Also every answer as `batch` rows "
                                                       "(.jsonl/.csv/.parquet); with --resume, continues that run."),
                resume: bool = Resume, force: bool = Force, workers: int = Workers, engine: str = Engine,
                address: Optional[str] = Address, ship: str = Ship, threads: Optional[int] = Threads,
                model: Optional[str] = ModelOpt,
                max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Most tokens per answer."),
                dense: bool = Dense, no_log: bool = NoLog, cache: bool = Cache):
    """A clause table: one row per contract, one column per clause; each cell the short answer with its quote
    and page, or "not stated"."""
    if list_clauses:
        cat, aliases = extract.catalogue()
        for c in cat.values():
            say(f"{c.key:<36} {c.question}")
        say("aliases: " + ", ".join(f"{a} = {k}" for a, k in aliases.items()))
        return
    if not paths:
        raise DocreaderError("give the contracts (files, directories or globs)")
    chosen = extract.choose(clauses)
    docs = batch.expand_inputs(paths)
    for target in (out, html_out):
        if target and Path(target).exists() and not (force or resume):
            raise DocreaderError("already exists (--force replaces it; --resume rewrites it)", path=target)
    if out:
        batch_io.out_format(out)
    if resume and not rows_out:
        raise DocreaderError("--resume needs --rows FILE (the run's rows to continue)")
    settings = _settings(model, max_new_tokens, dense, cache, None, None, workers, engine, threads, address, ship)
    output = batch_io.Output(rows_out, resume=resume, force=force) if rows_out else None
    rows, summary, interrupted, n = _run(docs, [c.question for c in chosen], settings, output, workers, engine,
                                         address, ship, no_log, resume)
    if output:
        output.finish()
    entries = extract.table(rows, docs, chosen)
    if out:
        extract.write_table(out, entries, chosen)
    if html_out:
        links = {} if no_log else _audit_pages(entries, Path(html_out))
        Path(html_out).write_text(extract.render_html(entries, chosen, links), encoding="utf-8")
    if not out:
        for e in entries:
            say(f"\n{e['document']}")
            for c in chosen:
                say(f"  {c.key}: {e['cells'][c.key]['text']}")
    wrote = ", ".join(x for x in (out, html_out, rows_out) if x) or "printed"
    _report(summary, n, interrupted, f"table of {len(entries)} contracts × {len(chosen)} clauses: {wrote}")


def _audit_pages(entries: list[dict], table: Path) -> dict[int, str]:
    """Each logged answer's audit page (`docreader audit ID --html`) in TABLE_audit/ beside the table;
    -> answer id -> its link relative to the table. An answer whose page cannot be made gets no link."""
    from .audit_html import render
    from .audit_record import load_record
    folder = table.with_name(table.stem + "_audit")
    folder.mkdir(exist_ok=True)
    db, links = store.open_db(), {}
    for e in entries:
        for c in e["cells"].values():
            aid = c["answer_id"]
            if aid is None or aid in links:
                continue
            try:
                (folder / f"answer-{aid}.html").write_text(render(load_record(db, aid)), encoding="utf-8")
            except DocreaderError:
                continue
            links[aid] = f"{folder.name}/answer-{aid}.html"
    return links


def register(app: typer.Typer) -> None:
    app.command("batch")(friendly(batch_cmd))
    app.command("extract")(friendly(extract_cmd))
