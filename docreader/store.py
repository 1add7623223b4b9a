"""The SQLite log at $DOCREADER_HOME/docreader.db, through sqlite-utils.

Foreign keys are on, every write happens in one transaction (an answer, its spans and quotes land
together or not at all), and the schema evolves through numbered migrations recorded in `_migrations`. What the
machine does to the file (another process's lock, a read-only file, a full disk, a damaged or foreign
file) becomes one `LogError` naming the file; mistakes in our own SQL stay sqlite3 errors.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict
from functools import wraps
from pathlib import Path
from typing import Callable

import sqlite_utils

from .document import Document
from .errors import DocreaderError
from .home import db_path

BUSY_TIMEOUT_S = 10.0  # how long to wait for another process's lock before saying so
MAX_INTEGER = 2**63 - 1  # SQLite's largest INTEGER (an id or a LIMIT past it overflows)
TABLES = {"documents": "m001_initial", "sessions": "m001_initial", "answers": "m001_initial",
          "spans": "m001_initial", "quotes": "m003_quotes",
          "answers_fts": "m005_search",
          "token_regions": "m007_token_regions"}  # each table -> the migration that creates it
_REASONS = {  # sqlite error name -> what it means for the user
    "SQLITE_BUSY": "the log is locked by another process (waited {timeout:g} s)",
    "SQLITE_LOCKED": "the log is locked by another process (waited {timeout:g} s)",
    "SQLITE_READONLY": "the log is read-only ({error})",
    "SQLITE_FULL": "the disk is full ({error})",
    "SQLITE_CANTOPEN": "cannot open the log ({error})",
    "SQLITE_PERM": "no permission to use the log ({error})",
    "SQLITE_IOERR": "cannot read or write the log ({error})",
    "SQLITE_NOTADB": "{error} (move it aside to start a new log)",
    "SQLITE_CORRUPT": "the log is damaged: {error} (move it aside to start a new log)",
}


class LogError(DocreaderError):
    """The log cannot be used as it is (locked, read-only, full, damaged): the user's machine, not a bug."""


class Log(sqlite_utils.Database):
    """The log's database; knows its path, so every error can name the file."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            raise LogError("cannot open the log (it is a directory)", path=str(path))
        super().__init__(_connect(path))


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)  # waits this long for another process's lock


def _log_error(e: sqlite3.Error, path: Path) -> LogError | None:
    """The user-facing LogError for an error the machine caused, None for one our code caused."""
    name = (getattr(e, "sqlite_errorname", "") or "").split("_")[:2]
    template = _REASONS.get("_".join(name))
    if template is None:
        return None
    return LogError(template.format(timeout=BUSY_TIMEOUT_S, error=e), path=str(path))


def guarded(fn):
    """Turn the machine's sqlite errors inside `fn(db, ...)` into one LogError naming the file."""
    @wraps(fn)
    def run(db: Log, *args, **kwargs):
        try:
            return fn(db, *args, **kwargs)
        except sqlite3.Error as e:
            err = _log_error(e, db.path)
            if err is None:
                raise
            raise err from e
    return run

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def migration(fn):
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: Log) -> None:
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


@migration
def m003_quotes(db: sqlite_utils.Database) -> None:
    """The passages each answer quotes (`docreader.quotes`), verified against the document or not; char_start,
    char_end, page and location are NULL for a quote not found. Answers logged before have none."""
    db.conn.execute('CREATE TABLE "quotes" ("id" INTEGER PRIMARY KEY, '
                    '"answer_id" INTEGER NOT NULL REFERENCES "answers"("id") ON DELETE CASCADE, "rank" INTEGER, '
                    '"text" TEXT, "verified" INTEGER, "char_start" INTEGER, "char_end" INTEGER, "score" FLOAT, '
                    '"page" INTEGER, "label" TEXT, "location" TEXT)')
    db.conn.execute('CREATE INDEX "idx_quotes_answer_id" ON "quotes" ("answer_id")')


@migration
def m004_answer_details(db: sqlite_utils.Database) -> None:
    """Why generation stopped (`generate.STOP_REASONS`: "eos", "max_tokens", ...), how many prompt tokens came
    from the document cache and the RoPE factor in use (NULL for answers logged before); an index for the
    per-document queries."""
    answers = db["answers"]
    answers.add_column("stop_reason", str)
    answers.add_column("cached_tokens", int)
    answers.add_column("rope_factor", float)
    answers.create_index(["document_id"])


@migration
def m005_search(db: sqlite_utils.Database) -> None:
    """Full-text search over questions and answers (`docreader log -q`); built from the answers already
    logged, kept in step by triggers. sqlite-utils >= 4 runs this inside our transaction (no implicit COMMIT)."""
    db["answers"].enable_fts(["question", "answer"], fts_version="FTS5", create_triggers=True)


@migration
def m006_answer_spans_view(db: sqlite_utils.Database) -> None:
    """Each selected span beside its answer with the span's text cut from the document, so Datasette (or any
    SQL client) shows what was selected, not only character offsets. SQLite's substr counts characters, as
    Python's offsets do."""
    db.create_view("answer_spans", """
        SELECT s.id AS span_id, a.id AS answer_id, s.rank, s.label, s.page, s.score, s.char_start, s.char_end,
               substr(d.text, s.char_start + 1, s.char_end - s.char_start) AS span_text,
               a.question, a.answer, a.model, a.mode, a.created, a.session_id, d.path AS document_path
        FROM spans s JOIN answers a ON a.id = s.answer_id JOIN documents d ON d.id = a.document_id""")


@migration
def m007_token_regions(db: sqlite_utils.Database) -> None:
    """The audit page's per-answer-token selections (`docreader.token_regions`): one compact blob per answer
    (each token's top document blocks, the blocks' bounds and heat). Answers logged before have none."""
    db.conn.execute('CREATE TABLE "token_regions" ('
                    '"answer_id" INTEGER PRIMARY KEY REFERENCES "answers"("id") ON DELETE CASCADE, '
                    '"block_tokens" INTEGER, "blocks" INTEGER, "tokens" INTEGER, "data" BLOB)')


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


def open_db(path: str | Path | None = None, write: bool = False) -> Log:
    """The log, migrated and checked. `write`: also make sure an answer could be saved now (lock, read-only),
    so that `ask` fails before it generates, not after."""
    path = Path(path) if path else db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = Log(path)
    except sqlite3.Error as e:
        raise (_log_error(e, path) or e) from e
    _prepare(db, write)
    return db


@guarded
def _prepare(db: Log, write: bool) -> None:
    db.conn.execute("PRAGMA foreign_keys = ON")
    _check_tables(db)  # before migrating: a later migration would fail on the missing tables
    migrate(db)
    _check_tables(db)
    if write:  # a write, rolled back: takes the write lock (bounded wait) and touches the file
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(db.conn.execute("PRAGMA user_version").fetchone()[0])
            db.conn.execute(f"PRAGMA user_version = {version}")
        finally:
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")


def _check_tables(db: Log) -> None:
    # the record first: tables land with it, so one seen recorded must be there (another process may be
    # committing them between the two reads)
    applied = _applied(db)
    missing = [t for t, m in TABLES.items() if m in applied and t not in db.table_names()]
    if missing:
        raise LogError(f"the log is damaged: table {', '.join(missing)} missing although its migrations are "
                       f"recorded (move it aside to start a new log)", path=str(db.path))


def _applied(db: Log) -> set[str]:
    if "_migrations" not in db.table_names():
        return set()
    return {r[0] for r in db.conn.execute("select name from _migrations")}


def migrate(db: Log) -> None:
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
    path = doc.path if doc.path.startswith("<") else str(Path(doc.path).resolve())  # "<stdin>" stays a name
    return {"id": doc.sha256, "path": path, "format": doc.format, "kind": doc.kind,
            "chars": len(doc.text), "text": doc.text, "regions": json.dumps([asdict(r) for r in doc.regions]),
            "created": now()}


@contextmanager
def transaction(db: Log):
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


def _insert(db: Log, table: str, row: dict, upsert_pk: str | None = None, keep: tuple[str, ...] = ()) -> int:
    """INSERT (or upsert on `upsert_pk`, leaving the columns in `keep` as first written) on the raw
    connection, inside the caller's transaction."""
    cols = list(row)
    names = ", ".join(f'"{c}"' for c in cols)
    sql = f'INSERT INTO "{table}" ({names}) VALUES ({", ".join("?" for _ in cols)})'
    if upsert_pk:
        sets = ", ".join(f'"{c}" = excluded."{c}"' for c in cols if c != upsert_pk and c not in keep)
        sql += f' ON CONFLICT("{upsert_pk}") DO UPDATE SET {sets}'
    return db.conn.execute(sql, [row[c] for c in cols]).lastrowid


def new_session_id() -> str:
    """A chat session's id; its row is written with its first answer (`save_answer(session_model=...)`),
    so a chat that ends or is killed before answering leaves nothing behind."""
    return uuid.uuid4().hex[:12]


@guarded
def save_answer(db: Log, doc: Document, answer: dict, spans: list[dict], session_model: str | None = None,
                quotes: list[dict] = (), token_regions: dict | None = None) -> int:
    """Document (once per hash), answer, spans, quotes and token regions in one transaction; returns the answer
    id. `session_model`: also create the answer's session (with this model) if it does not exist yet."""
    with transaction(db):
        _insert(db, "documents", _document_row(doc), upsert_pk="id", keep=("created",))  # first seen, kept
        if session_model is not None and answer.get("session_id"):
            db.conn.execute("INSERT OR IGNORE INTO sessions (id, document_id, model, created) VALUES (?, ?, ?, ?)",
                            [answer["session_id"], doc.sha256, session_model, now()])
        aid = _insert(db, "answers", {**answer, "document_id": doc.sha256, "created": now()})
        for s in spans:
            _insert(db, "spans", {**s, "answer_id": aid})
        for q in quotes:
            _insert(db, "quotes", {**q, "answer_id": aid})
        if token_regions is not None:
            _insert(db, "token_regions", {**token_regions, "answer_id": aid})
    return aid


def keep_unsaved(answer: dict, log_path: Path) -> Path | None:
    """Write an answer the log could not take to a JSON file beside the log (else in the temp dir), whole
    or not at all; returns its path (None when no folder could take it)."""
    name = f"unsaved-answer-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.json"  # never overwrites
    data = json.dumps(answer, ensure_ascii=False, indent=2) + "\n"
    for folder in (Path(log_path).parent / "unsaved", Path(tempfile.gettempdir())):
        tmp = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, suffix=".part", delete=False) as f:
                tmp = f.name
                f.write(data)
            os.replace(tmp, folder / name)
            return folder / name
        except OSError:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
    return None


@guarded
def get_answer(db: Log, answer_id: int) -> dict:
    if not 1 <= answer_id <= MAX_INTEGER:
        raise DocreaderError(f"no answer with id {answer_id} (see `docreader log`)")
    try:
        row = db["answers"].get(answer_id)
    except sqlite_utils.db.NotFoundError:
        raise DocreaderError(f"no answer with id {answer_id} (see `docreader log`)")
    row["spans"] = list(db.query("select * from spans where answer_id = ? order by rank", [answer_id]))
    row["quotes"] = [{"rank": q["rank"], "text": q["text"], "verified": bool(q["verified"]), "char_start": q["char_start"],
                      "char_end": q["char_end"], "score": q["score"], **json.loads(q["location"] or "{}")}
                     for q in db.query("select * from quotes where answer_id = ? order by rank", [answer_id])]
    return row


@guarded
def get_document(db: Log, doc_id: str) -> dict:
    return db["documents"].get(doc_id)


@guarded
def recent_answers(db: Log, n: int = 10, session_id: str | None = None, *, query: str | None = None,
                   document: str | None = None, model: str | None = None, since: str | None = None) -> list[dict]:
    """The latest `n` answers, or with `query` the `n` that match it best (full-text, question and answer;
    each word is taken literally, not as FTS syntax). `document`: a document's sha256 or a prefix of it, or
    (part of) its path; `model`: the model's name; `since`: a UTC time "YYYY-MM-DDTHH:MM:SS"."""
    where, args, join, order = [], [], "", "a.id desc"
    if query is not None:
        if not any(ch.isalnum() for ch in query):  # the FTS tokenizer keeps only letters and digits
            raise DocreaderError(f"the search term {query!r} has no words to search for")
        terms = db.quote_fts(query)
        join, order = "join answers_fts on answers_fts.rowid = a.id", "answers_fts.rank, a.id desc"
        where.append("answers_fts match ?")
        args.append(terms)
    if session_id:
        where.append("a.session_id = ?")
        args.append(session_id)
    if document:
        where.append("(substr(d.id, 1, length(?)) = ? or d.path = ? or instr(d.path, ?) > 0)")
        args += [document.lower(), document.lower(), document, document]
    if model:
        where.append("a.model = ?")
        args.append(model)
    if since:
        where.append("a.created >= ?")
        args.append(since)
    return list(db.query(
        f"select a.*, d.path as document_path, "
        f"(select count(*) from quotes q where q.answer_id = a.id and q.verified) as quotes_verified, "
        f"(select count(*) from quotes q where q.answer_id = a.id and not q.verified) as quotes_unverified, "
        f"(select count(*) from spans s where s.answer_id = a.id) as spans "
        f"from answers a join documents d on d.id = a.document_id {join} "
        f"{'where ' + ' and '.join(where) if where else ''} order by {order} limit ?", [*args, n]))


@guarded
def delete_answers(db: Log, answer_ids: list[int]) -> dict[int, tuple[int, int]]:
    """Delete answers with their spans and quotes, all in one transaction: every id must exist, else nothing
    is deleted (spans have no ON DELETE CASCADE, so they go first; quotes and token regions would cascade).
    Their documents and chat sessions stay. -> {answer id: (spans deleted, quotes deleted)}."""
    out = {}
    with transaction(db):
        for aid in dict.fromkeys(answer_ids):
            if not 1 <= aid <= MAX_INTEGER or not db.conn.execute("select 1 from answers where id = ?",
                                                                   [aid]).fetchone():
                raise DocreaderError(f"no answer with id {aid} (see `docreader log`); nothing was deleted")
            spans = db.conn.execute("delete from spans where answer_id = ?", [aid]).rowcount
            quotes = db.conn.execute("delete from quotes where answer_id = ?", [aid]).rowcount
            db.conn.execute("delete from answers where id = ?", [aid])
            out[aid] = (spans, quotes)
    return out


@guarded
def session_history(db: Log, session_id: str) -> list[tuple[str, str]]:
    return [(r["question"], r["answer"]) for r in
            db.query("select question, answer from answers where session_id = ? order by id", [session_id])]


@guarded
def get_session(db: Log, session_id: str | None = None) -> dict:
    """A session by id, or the most recent one (for --continue)."""
    if session_id:
        rows = list(db.query("select * from sessions where id = ?", [session_id]))
    else:
        rows = list(db.query("select * from sessions order by created desc, rowid desc limit 1"))
    if not rows:
        raise DocreaderError(f"no chat session {session_id}" if session_id else "no earlier chat session to continue")
    return rows[0]


@guarded
def list_documents(db: Log) -> list[dict]:
    return list(db.query(
        "select d.id, d.path, d.format, d.kind, d.chars, d.created, count(a.id) as answers from documents d "
        "left join answers a on a.document_id = d.id group by d.id order by d.created desc"))
