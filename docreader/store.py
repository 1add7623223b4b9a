"""The SQLite log at $DOCREADER_HOME/docreader.db, through sqlite-utils.

Foreign keys are on, every write happens in one transaction (an answer and its spans land together or
not at all), and the schema evolves through numbered migrations recorded in `_migrations`.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import sqlite_utils

from .document import Document
from .errors import DocreaderError
from .home import db_path

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def migration(fn):
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db["documents"].create({"id": str, "path": str, "format": str, "kind": str, "chars": int, "text": str,
                            "regions": str, "created": str}, pk="id")
    db["sessions"].create({"id": str, "document_id": str, "model": str, "created": str}, pk="id",
                          foreign_keys=[("document_id", "documents", "id")])
    db["answers"].create({"id": int, "document_id": str, "session_id": str, "question": str, "answer": str,
                          "model": str, "mode": str, "dsa": str, "prompt_tokens": int, "document_tokens": int,
                          "new_tokens": int, "dropped_turns": int, "load_s": float, "prefill_s": float,
                          "decode_s": float, "tokens_per_s": float, "created": str}, pk="id",
                         foreign_keys=[("document_id", "documents", "id"), ("session_id", "sessions", "id")])
    db["spans"].create({"id": int, "answer_id": int, "rank": int, "char_start": int, "char_end": int,
                        "page": int, "label": str, "score": float, "location": str}, pk="id",
                       foreign_keys=[("answer_id", "answers", "id")])
    db["answers"].create_index(["session_id"])
    db["spans"].create_index(["answer_id"])


@migration
def m002_provenance(db: sqlite_utils.Database) -> None:
    """What produced each answer's spans: indexer weights (file + sha256, or untrained + seed), DSA config,
    backend and kernel path, span weighting, code version (JSON; NULL for answers logged before)."""
    db.conn.execute('ALTER TABLE "answers" ADD COLUMN "provenance" TEXT')


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


def open_db(path: str | Path | None = None) -> sqlite_utils.Database:
    path = Path(path) if path else db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(path)
    db.conn.execute("PRAGMA foreign_keys = ON")
    migrate(db)
    return db


def _applied(db: sqlite_utils.Database) -> set[str]:
    if "_migrations" not in db.table_names():
        return set()
    return {r[0] for r in db.conn.execute("select name from _migrations")}


def migrate(db: sqlite_utils.Database) -> None:
    if {fn.__name__ for fn in MIGRATIONS} <= _applied(db):
        return
    # Pending work: take the write lock first (BEGIN IMMEDIATE waits for it) and look again, so two processes
    # opening a new log at once don't both create the tables ("already exists" / "database is locked").
    with transaction(db):
        db.conn.execute('CREATE TABLE IF NOT EXISTS "_migrations" ("name" TEXT PRIMARY KEY, "applied" TEXT)')
        done = _applied(db)
        for fn in MIGRATIONS:  # each migration and its record land together or not at all
            if fn.__name__ not in done:
                fn(db)
                _insert(db, "_migrations", {"name": fn.__name__, "applied": now()})


def _document_row(doc: Document) -> dict:
    return {"id": doc.sha256, "path": str(Path(doc.path).resolve()), "format": doc.format, "kind": doc.kind,
            "chars": len(doc.text), "text": doc.text, "regions": json.dumps([asdict(r) for r in doc.regions]),
            "created": now()}


@contextmanager
def transaction(db: sqlite_utils.Database):
    """One explicit BEGIN … COMMIT (ROLLBACK on any error) on the raw connection.

    Not `with db.conn:` around sqlite-utils' insert/upsert/execute: those commit each statement (or their
    own block) on their own, so a failed span insert used to leave its answer and document behind."""
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")  # the write lock up front: waits (busy timeout) instead of failing later
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _insert(db: sqlite_utils.Database, table: str, row: dict, upsert_pk: str | None = None) -> int:
    """INSERT (or upsert on `upsert_pk`) on the raw connection, inside the caller's transaction."""
    cols = list(row)
    names = ", ".join(f'"{c}"' for c in cols)
    sql = f'INSERT INTO "{table}" ({names}) VALUES ({", ".join("?" for _ in cols)})'
    if upsert_pk:
        sets = ", ".join(f'"{c}" = excluded."{c}"' for c in cols if c != upsert_pk)
        sql += f' ON CONFLICT("{upsert_pk}") DO UPDATE SET {sets}'
    return db.conn.execute(sql, [row[c] for c in cols]).lastrowid


def new_session(db: sqlite_utils.Database, doc: Document, model: str) -> str:
    import uuid
    sid = uuid.uuid4().hex[:12]
    with transaction(db):
        _insert(db, "documents", _document_row(doc), upsert_pk="id")
        _insert(db, "sessions", {"id": sid, "document_id": doc.sha256, "model": model, "created": now()})
    return sid


def save_answer(db: sqlite_utils.Database, doc: Document, answer: dict, spans: list[dict]) -> int:
    """Document (once per hash), answer and spans in one transaction; returns the answer id."""
    with transaction(db):
        _insert(db, "documents", _document_row(doc), upsert_pk="id")
        aid = _insert(db, "answers", {**answer, "document_id": doc.sha256, "created": now()})
        for s in spans:
            _insert(db, "spans", {**s, "answer_id": aid})
    return aid


def get_answer(db: sqlite_utils.Database, answer_id: int) -> dict:
    try:
        row = db["answers"].get(answer_id)
    except sqlite_utils.db.NotFoundError:
        raise DocreaderError(f"no answer with id {answer_id} (see `docreader log`)")
    row["spans"] = list(db.query("select * from spans where answer_id = ? order by rank", [answer_id]))
    return row


def get_document(db: sqlite_utils.Database, doc_id: str) -> dict:
    return db["documents"].get(doc_id)


def recent_answers(db: sqlite_utils.Database, n: int = 10, session_id: str | None = None) -> list[dict]:
    where, args = ("where a.session_id = ?", [session_id]) if session_id else ("", [])
    return list(db.query(
        f"select a.*, d.path as document_path from answers a join documents d on d.id = a.document_id "
        f"{where} order by a.id desc limit ?", [*args, n]))


def session_history(db: sqlite_utils.Database, session_id: str) -> list[tuple[str, str]]:
    return [(r["question"], r["answer"]) for r in
            db.query("select question, answer from answers where session_id = ? order by id", [session_id])]


def get_session(db: sqlite_utils.Database, session_id: str | None = None) -> dict:
    """A session by id, or the most recent one (for --continue)."""
    if session_id:
        rows = list(db.query("select * from sessions where id = ?", [session_id]))
    else:
        rows = list(db.query("select * from sessions order by created desc, rowid desc limit 1"))
    if not rows:
        raise DocreaderError(f"no chat session {session_id}" if session_id else "no earlier chat session to continue")
    return rows[0]


def list_documents(db: sqlite_utils.Database) -> list[dict]:
    return list(db.query(
        "select d.id, d.path, d.format, d.kind, d.chars, d.created, count(a.id) as answers from documents d "
        "left join answers a on a.document_id = d.id group by d.id order by d.created desc"))
