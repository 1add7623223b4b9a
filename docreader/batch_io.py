"""A batch's output file (JSONL, CSV or Parquet) and `--resume`.

Rows go first to a journal beside the output (`OUT.partial.jsonl`, one flushed line per row), so a run that is
killed loses nothing; the output itself is only ever written whole (a temporary file renamed into place) when the
run ends or is interrupted, so it is never half-written. `--resume` reads the output and the journal, skips every
(document, question) pair already answered there — or in the SQLite log since the run first started — and
answers the rest; failed ones are tried again and their old error rows replaced.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

from .errors import DocreaderError

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
# Every row has these columns, in this order; lists are JSON text in CSV and Parquet cells.
COLUMNS = ["document", "question_no", "question", "short_answer", "absent", "quote", "quote_page", "quote_label",
           "answer", "quotes", "spans", "error", "document_sha256", "format", "document_tokens", "prompt_tokens",
           "new_tokens", "stop_reason", "load_s", "prefill_s", "decode_s", "prefix_cache", "seconds", "cpu_s", "model",
           "mode", "indexer", "adapter", "code", "answer_id", "worker", "run_started"]
LIST_COLUMNS = ("quotes", "spans")
TYPES = {**dict.fromkeys(("question_no", "quote_page", "document_tokens", "prompt_tokens", "new_tokens", "answer_id"),
                         int), **dict.fromkeys(("load_s", "prefill_s", "decode_s", "seconds", "cpu_s"), float), "absent": bool}
PARQUET_MISSING = "Parquet output needs pyarrow: pip install 'docreader[parquet]' (or write .jsonl / .csv)"


def out_format(path: str) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DocreaderError(f"unknown output format (end the name with {', '.join(FORMATS)})", path=path)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise DocreaderError(PARQUET_MISSING, path=path) from None
    return fmt


def key(row: dict) -> tuple[str, str | None]:
    return row["document"], row.get("question")


class Output:
    """The rows of one run (and of the runs it resumes), written whole at `finish`."""

    def __init__(self, path: str, resume: bool = False, force: bool = False) -> None:
        self.path, self.fmt = Path(path), out_format(path)
        self.journal = self.path.with_name(self.path.name + ".partial.jsonl")
        exists = self.path.exists() or self.journal.exists()
        if exists and not (resume or force):
            raise DocreaderError("already exists: --resume continues that run, --force replaces it", path=path)
        if self.path.exists() and self.path.is_dir():
            raise DocreaderError("is a directory", path=path)
        self.old: list[dict] = []
        if resume and exists:
            self.old = (read_rows(self.path, self.fmt) if self.path.exists() else []) + _read_journal(self.journal)
        elif force:
            self.journal.unlink(missing_ok=True)
        self.new: list[dict] = []
        if not os.access(self.path.parent if str(self.path.parent) else ".", os.W_OK):
            raise DocreaderError("cannot write in its folder", path=path)
        self._journal = None  # opened with the first row: bad input later on leaves nothing behind

    def done(self) -> set[tuple[str, str | None]]:
        """(document, question) pairs with an answer already (error rows are not done: they run again)."""
        return {key(r) for r in self.old if not r.get("error")}

    def started(self) -> str | None:
        """When the run this output belongs to first started (None for a new one)."""
        return min((r["run_started"] for r in self.old if r.get("run_started")), default=None)

    def add(self, row: dict) -> None:
        self.new.append(row)
        if self._journal is None:
            self._journal = open(self.journal, "a", encoding="utf-8")
        self._journal.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._journal.flush()

    def rows(self) -> list[dict]:
        """Old rows not superseded by this run's (a document's error row goes when it has new rows), then new."""
        new_keys = {key(r) for r in self.new}
        new_docs = {r["document"] for r in self.new}
        kept = {}
        for r in self.old:
            if key(r) in new_keys or (r.get("question") is None and r["document"] in new_docs):
                continue
            kept[key(r)] = r  # the journal's copy of a row wins over the output's
        return list(kept.values()) + self.new

    def finish(self) -> int:
        """Write the output whole (temporary file, then rename) and drop the journal; -> rows written."""
        if self._journal is not None:
            self._journal.close()
        rows = self.rows()
        folder = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=folder)
        os.close(fd)
        try:
            write_rows(Path(tmp), self.fmt, rows)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.journal.unlink(missing_ok=True)
        return len(rows)


def _cell(value):
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def write_rows(path: Path, fmt: str, rows: list[dict], columns: list[str] | None = None) -> None:
    """Rows as JSONL (lists kept), CSV or Parquet (lists as JSON text), every column in every row."""
    columns = columns or COLUMNS
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({c: r.get(c) for c in columns}, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for r in rows:
                w.writerow(["" if r.get(c) is None else _cell(r.get(c)) for c in columns])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        table = pa.Table.from_pylist([{c: _cell(r.get(c)) for c in columns} for r in rows],
                                     schema=_schema(rows, columns))
        pq.write_table(table, path)


def _schema(rows: list[dict], columns: list[str]):
    """Each column's type from its values (a column of nulls is text), so every run's file has one schema."""
    import pyarrow as pa
    types = {bool: pa.bool_(), int: pa.int64(), float: pa.float64()}
    fields = []
    for c in columns:
        kinds = {type(r.get(c)) for r in rows if r.get(c) is not None and not isinstance(r.get(c), (list, dict))}
        kinds = {TYPES[c]} if c in TYPES else kinds  # a batch's own columns: one schema whatever the values
        if kinds == {int, float}:
            t = pa.float64()
        else:
            t = types.get(next(iter(kinds)), pa.string()) if len(kinds) == 1 else pa.string()
        fields.append(pa.field(c, t))
    return pa.schema(fields)


def read_rows(path: Path, fmt: str) -> list[dict]:
    """An output written by `write_rows`, lists decoded; an unreadable one is an error naming it."""
    try:
        if fmt == "jsonl":
            return _read_journal(path, strict=True)
        if fmt == "csv":
            with open(path, encoding="utf-8", newline="") as f:
                rows = [{k: (v if v != "" else None) for k, v in r.items()} for r in csv.DictReader(f)]
        else:
            import pyarrow.parquet as pq
            rows = pq.read_table(path).to_pylist()
        for r in rows:
            for c in LIST_COLUMNS:
                if isinstance(r.get(c), str):
                    r[c] = json.loads(r[c])
        if rows and not {"document", "question", "error"} <= set(rows[0]):
            raise ValueError("not a docreader batch output (no document/question/error columns)")
        return rows
    except (OSError, ValueError, UnicodeDecodeError, KeyError) as e:
        raise DocreaderError(f"cannot resume from it: {e}", path=str(path)) from None
    except Exception as e:  # pyarrow's own errors
        raise DocreaderError(f"cannot resume from it: {type(e).__name__}: {e}", path=str(path)) from None


def _read_journal(path: Path, strict: bool = False) -> list[dict]:
    """JSON lines; in a journal, a last line cut short by a kill is dropped (it was never complete)."""
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if strict or i < len(lines) - 1 and any(x.strip() for x in lines[i + 1:]):
                raise ValueError(f"line {i + 1} is not JSON") from None
    return rows


def rows_from_log(docs: list[str], questions: list[tuple[int, str]], model: str, since: str,
                  done: set[tuple[str, str | None]], db_path=None) -> list[dict]:
    """Rows for answers the log holds from this run (since `since`, same documents, questions and model) that
    the output lacks: an answer logged just before a crash is not asked again."""
    from . import store
    from .quotes import parse
    qno = {q: n for n, q in questions}
    given = {str(Path(d).resolve()): d for d in docs}  # the log keeps a document's absolute path
    given.update({d: d for d in docs})
    path = Path(db_path) if db_path else store.db_path()
    if not path.exists():
        return []
    db = store.open_db(path)
    rows = []
    for hit in db.query("SELECT a.id, d.path FROM answers a JOIN documents d ON d.id = a.document_id "
                        "WHERE a.model = ? AND a.created >= ? ORDER BY a.id", [model, since]):
        r = store.get_answer(db, hit["id"])
        doc = given.get(hit["path"])
        if doc is None or r["question"] not in qno or (doc, r["question"]) in done:
            continue
        parsed = parse(r["answer"])
        quotes = [{k: q.get(k) for k in ("text", "verified", "page", "label")} for q in r["quotes"]]
        first = next((q for q in quotes if q["verified"]), None)
        prov = json.loads(r["provenance"]) if r.get("provenance") else {}
        from .batch import weights_fields
        rows.append({"document": doc, "question_no": qno[r["question"]], "question": r["question"],
                     "short_answer": parsed.answer, "absent": parsed.absent, "answer": r["answer"],
                     "quote": first and first["text"], "quote_page": first and first["page"],
                     "quote_label": first and first["label"], "quotes": quotes,
                     "spans": [{"rank": s["rank"], "score": s["score"], "label": s["label"], "page": s["page"]}
                               for s in r["spans"][:3]],
                     "error": None, "document_sha256": r["document_id"], "prompt_tokens": r["prompt_tokens"],
                     "document_tokens": r["document_tokens"], "new_tokens": r["new_tokens"],
                     "prefill_s": r["prefill_s"], "decode_s": r["decode_s"], "model": r["model"], "mode": r["mode"],
                     **weights_fields(prov), "answer_id": r["id"], "worker": "from the log", "run_started": since})
        done.add((doc, r["question"]))
    return rows
