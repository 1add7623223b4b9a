"""`docreader log` (list and search the logged answers, `log path`, `log rm`) and `docreader documents`.

The log is the SQLite file `docreader.store` writes; `docreader log path` names it for other tools
(`datasette "$(docreader log path)"`). Times are UTC, as stored and printed.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Optional

import typer

from . import store
from .errors import DocreaderError
from .home import db_path
from .terminal import friendly, in_range, say

log_app = typer.Typer(help="The log of answers (SQLite): list, search, delete; `docreader log path` for other tools.")

UTC_FORMAT = "%Y-%m-%dT%H:%M:%S"  # how the log stores times (store.now)
_UNITS = {"m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S")


def parse_since(text: str, now: float | None = None) -> str:
    """--since as the log's UTC time string: an age (30m, 2h, 7d, 1w: that long before now) or a UTC date or
    time (2026-12-01, 2026-12-01T09:30, a trailing Z allowed)."""
    t = text.strip().removesuffix("Z")
    age = re.fullmatch(r"(\d{1,12})\s*(m|min|h|d|w)", t)
    if age:
        start = (time.time() if now is None else now) - int(age[1]) * _UNITS[age[2]]
        return time.strftime(UTC_FORMAT, time.gmtime(max(0.0, start)))
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(t, fmt).strftime(UTC_FORMAT)
        except ValueError:
            pass
    raise DocreaderError(f"--since takes an age (30m, 2h, 7d, 1w) or a UTC date or time (2026-12-01, "
                         f"2026-12-01T09:30), not {text!r}")


def _nested(row: dict) -> dict:
    """A log row for --json: `dsa` and `provenance` as objects, as `ask --json` gives them."""
    return row | {k: json.loads(row[k]) if row.get(k) else None for k in ("dsa", "provenance")}


def _stopped(reason: str | None) -> str:
    return f" · stopped: {reason}" if reason and reason != "eos" else ""


@log_app.callback(invoke_without_command=True)
@friendly
def log_list(ctx: typer.Context,
             n: int = typer.Option(10, "-n", "--count", help="How many answers."),
             query: Optional[str] = typer.Option(None, "-q", "--query", help="Full-text search of questions and "
                                                 "answers (each word literally); best matches first."),
             document: Optional[str] = typer.Option(None, "--document", "-d", help="Only answers about this "
                                                    "document: its sha256 (or a prefix, see `docreader documents`) "
                                                    "or (part of) its path."),
             model: Optional[str] = typer.Option(None, "--model", "-m", help="Only answers by this model."),
             since: Optional[str] = typer.Option(None, "--since", help="Only answers since an age (30m, 2h, 7d) "
                                                 "or a UTC date/time (2026-12-01, 2026-12-01T09:30)."),
             session: Optional[str] = typer.Option(None, "--session", help="Only answers of chat session ID."),
             json_out: bool = typer.Option(False, "--json", help="The rows as JSON (dsa and provenance nested).")):
    """List the latest answers (newest first), or search them with -q."""
    if ctx.invoked_subcommand:
        return
    in_range("-n", n, 0)
    since_utc = parse_since(since) if since is not None else None
    filtered = any(v is not None for v in (query, document, model, since, session))
    rows = store.recent_answers(store.open_db(), n, session, query=query, document=document, model=model,
                                since=since_utc)
    if json_out:
        typer.echo(json.dumps([_nested(r) for r in rows], ensure_ascii=False, indent=2))
        return
    if not rows:
        say("no answers match" if filtered else "no answers yet")
    for r in rows:
        a = " ".join((r["answer"] or "").split())
        sid = f"  session {r['session_id']}" if r.get("session_id") else ""
        say(f"#{r['id']:<4} {r['created']}  {r['model']} ({r['mode']})  {r['document_path']}{sid}\n"
            f"      Q: {r['question']}\n      A: {a[:120]}{'…' if len(a) > 120 else ''}\n"
            f"      quotes: {r['quotes_verified']} verified, {r['quotes_unverified']} unverified · "
            f"selected spans: {r['spans']} (what the sparse attention read; not proof of use)"
            f"{_stopped(r.get('stop_reason'))}")


@log_app.command("path")
@friendly
def log_path():
    """Print the log's file (for sqlite3, sqlite-utils, Datasette)."""
    say(str(db_path()))


@log_app.command("rm")
@friendly
def log_rm(answer_ids: list[int] = typer.Argument(..., help="Answer ids from `docreader log`.")):
    """Delete answers with their spans and quotes (all or none; documents and chat sessions stay)."""
    removed = store.delete_answers(store.open_db(), answer_ids)
    for aid, (spans, quotes) in removed.items():
        say(f"deleted answer #{aid} ({spans} span{'s' * (spans != 1)}, {quotes} quote{'s' * (quotes != 1)})")


@friendly
def documents_cmd(json_out: bool = typer.Option(False, "--json")):
    """List documents that answers were logged for."""
    rows = store.list_documents(store.open_db())
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        say(f"{r['id'][:12]}  {r['format']:<5} {r['chars']:>9,} chars  {r['answers']:>3} answers  {r['path']}")
