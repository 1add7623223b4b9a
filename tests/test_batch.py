"""`docreader batch` and `docreader extract` (issue 21): inputs, rows, the output file and --resume, the clause
table; one integration run of the real model over tiny documents (interrupted, then resumed)."""

from __future__ import annotations

import json
import lzma
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from conftest import db_counts
from docreader import batch, batch_io, cli_batch, extract
from docreader.batch_engines import InProcess
from docreader.cli import app
from docreader.errors import DocreaderError

CUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "cuad" / "train.jsonl.xz"
CONTRACT = ("SUPPLY AGREEMENT\n1. Term. This agreement runs for three years.\n"
            "2. Governing law. This agreement is governed by the laws of the State of Delaware.\n")
QUESTIONS = ["Which law governs?", "How long is the term?"]


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


# -- inputs ---------------------------------------------------------------------------------------------------

def test_expand_inputs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.txt", "d/sub/b.md", "d/.hidden.txt", "c.pdf"):
        (tmp_path / name).write_text("x")
    got = batch.expand_inputs([str(tmp_path / "d"), str(tmp_path / "*.pdf"), str(tmp_path / "d/a.txt")])
    assert got == [str(tmp_path / "d/a.txt"), str(tmp_path / "d/sub/b.md"), str(tmp_path / "c.pdf")]
    with pytest.raises(DocreaderError, match="missing.pdf: no such file"):
        batch.expand_inputs([str(tmp_path / "missing.pdf")])
    with pytest.raises(DocreaderError, match="no documents match"):
        batch.expand_inputs([str(tmp_path / "*.docx")])


# -- the output and --resume ----------------------------------------------------------------------------------

def _row(doc, q, error=None, answer="A"):
    return {"document": doc, "question_no": 1, "question": q, "answer": None if error else answer, "error": error,
            "quotes": [] if not error else None, "absent": False if not error else None, "run_started": "T0"}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_resume_skips_done_rows_and_replaces_error_rows(tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    first = batch_io.Output(str(out))
    for r in (_row("a", "q1"), _row("a", "q2", error="boom"), _row("b", None, error="cannot load")):
        first.add(r)
    assert first.finish() == 3 and not first.journal.exists()
    with pytest.raises(DocreaderError, match="--resume"):
        batch_io.Output(str(out))
    second = batch_io.Output(str(out), resume=True)
    second.add(_row("c", "q1"))  # a row a killed run left in the journal, its last line cut short
    second._journal.write('{"document": "c", "quest')
    second._journal.close()
    third = batch_io.Output(str(out), resume=True)
    assert third.done() == {("a", "q1"), ("c", "q1")}  # error rows are tried again
    assert third.started() == "T0"
    third.add(_row("a", "q2"))
    third.add(_row("b", "q1"))
    third.finish()
    rows = batch_io.read_rows(out, batch_io.out_format(str(out)))
    keys = [(r["document"], r["question"]) for r in rows]
    assert sorted(keys) == [("a", "q1"), ("a", "q2"), ("b", "q1"), ("c", "q1")]
    assert not any(r["error"] for r in rows)  # the old error rows were replaced, not kept beside the new ones
    assert rows[0]["quotes"] == []  # lists come back as lists from every format


def test_output_is_never_half_written(tmp_path, monkeypatch):
    out = tmp_path / "results.csv"
    o = batch_io.Output(str(out))
    o.add(_row("a", "q1"))

    def broken(path, fmt, rows, columns=None):
        Path(path).write_text("half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(batch_io, "write_rows", broken)
    with pytest.raises(OSError):
        o.finish()
    assert not out.exists() and o.journal.exists()  # the rows are still in the journal for --resume
    assert [p.name for p in tmp_path.iterdir()] == [o.journal.name]


# -- the run loop -------------------------------------------------------------------------------------------------

class FakeAnswer(SimpleNamespace):
    def to_json(self):
        return {"id": self.id, "question": self.question, "answer": "Answer: Delaware.",
                "document": {"sha256": "s", "format": "txt"}, "tokens": {"document": 9, "prompt": 20, "new": 3},
                "short_answer": "Delaware.", "absent": False, "stop_reason": "eos", "model": "m", "mode": "sparse",
                "quotes": [{"text": "laws of the State of Delaware", "verified": True, "page": 2, "label": "p. 2"}],
                "spans": [{"rank": 1, "score": 0.5, "text": "the laws", "label": "p. 2", "page": 2}],
                "timings": {"prefill_s": 1.0}, "provenance": {"indexer": {"trained": False, "seed": 0}}}


class FakeEngine:
    def run(self, jobs):
        yield batch.Result("broken.pdf", error="truncated PDF", worker="w")
        yield batch.Result("ok.txt", [(1, FakeAnswer(id=None, question="q1"), None, 0.1),
                                      (2, None, "RuntimeError: out of memory", 0.1)], worker="w")


def test_failures_are_rows_and_the_run_goes_on():
    rows, saved = [], []
    jobs = [batch.Job("broken.pdf", [(1, "q1"), (2, "q2")]), batch.Job("ok.txt", [(1, "q1"), (2, "q2")])]
    s = batch.run(jobs, FakeEngine(), rows.append, lambda ans: saved.append(ans) or 41 + len(saved))
    assert s.documents == 2 and s.rows == 3 and len(s.failures) == 2
    assert rows[0]["error"] == "truncated PDF" and rows[0]["question"] is None
    ok, failed = rows[1], rows[2]
    assert (ok["answer_id"], ok["quote"], ok["quote_page"], ok["indexer"]) == (42, "laws of the State of Delaware", 2,
                                                                              "untrained, seed 0")
    assert failed["question"] == "q2" and failed["error"].startswith("RuntimeError")


# -- extract ------------------------------------------------------------------------------------------------------

def test_clauses_cover_cuad():
    clauses, aliases = extract.catalogue()
    assert len(clauses) == 41
    if CUAD.exists():
        with lzma.open(CUAD, "rt", encoding="utf-8") as f:
            cuad = {q["category"] for q in json.loads(f.readline())["questions"]}
        assert {c.category for c in clauses.values()} == cuad
    got = extract.choose("term,renewal,assignment, Governing Law ,term")
    assert [c.key for c in got] == ["expiration-date", "renewal-term", "anti-assignment", "governing-law"]
    assert len(extract.choose("all")) == 41
    with pytest.raises(DocreaderError, match="unknown clause 'gouverning-law'"):
        extract.choose("gouverning-law")


def test_clause_table_cells(tmp_path):
    law, term = extract.choose("governing-law,term")
    rows = [{"document": "a.pdf", "question": law.question, "short_answer": "Delaware.", "absent": False,
             "quote": "governed by the laws of the State of Delaware", "quote_page": 3, "quote_label": "p. 3",
             "answer_id": 7, "error": None},
            {"document": "a.pdf", "question": term.question, "short_answer": "The document does not say.",
             "absent": True, "answer_id": 8, "error": None},
            {"document": "b.pdf", "question": None, "error": "truncated PDF"}]
    entries = extract.table(rows, ["a.pdf", "b.pdf"], [law, term])
    a, b = entries[0]["cells"], entries[1]["cells"]
    assert a["governing-law"]["text"] == 'Delaware. — "governed by the laws of the State of Delaware" (p. 3)'
    assert a["expiration-date"]["text"] == "not stated"
    assert b["governing-law"]["text"] == "error: truncated PDF"
    out = tmp_path / "t.csv"
    extract.write_table(str(out), entries, [law, term])
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "document,governing-law,governing-law_page,expiration-date,expiration-date_page,error"
    assert lines[1].startswith("a.pdf,") and ",3," in lines[1]
    page = extract.render_html(entries, [law, term], {7: "answer-7.html"})
    assert '<a href="answer-7.html">' in page and "docreader audit 8" in page


# -- the command line ---------------------------------------------------------------------------------------------

def test_bad_input_writes_nothing(home, tmp_path):
    doc = tmp_path / "c.txt"
    doc.write_text(CONTRACT)
    out = tmp_path / "r.jsonl"
    for args, reason in [((tmp_path / "nope.pdf", "-q", "x", "--out", out), "nope.pdf: no such file"),
                         ((doc, "--out", out), "at least one -q"),
                         ((doc, "-q", "x", "--out", tmp_path / "r.xlsx"), "unknown output format"),
                         ((doc, "-q", "x", "--out", out, "--workers", "0"), "--workers must be"),
                         ((doc, "-q", "x", "--out", out, "--address", "h:1"), "--address needs --engine ray")]:
        r = cli("batch", *args)
        assert r.exit_code == 1 and reason in r.output and r.output.count("\n") == 1, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "home"]
    r = cli("extract", doc, "--clauses", "nonsense")
    assert r.exit_code == 1 and "unknown clause" in r.output


@pytest.mark.integration
def test_batch_interrupted_then_resumed(model_home, tmp_path, irc_file, monkeypatch):
    """Three documents (one broken) × 2 questions with the real model: the run is interrupted after the first
    document, resumed, and ends with one row per document × question (one error row for the broken one), no
    duplicates, each answer logged once."""
    contract = tmp_path / "contract.txt"
    contract.write_text(CONTRACT)
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 cut short")
    out = tmp_path / "results.jsonl"
    args = ["batch", irc_file, contract, broken, "-q", QUESTIONS[0], "-q", QUESTIONS[1], "-n", "4", "--threads", "1",
            "--out", out]
    real_run = InProcess.run

    def interrupted(self, jobs):
        it = real_run(self, jobs)
        yield next(it)
        raise KeyboardInterrupt
    monkeypatch.setattr(InProcess, "run", interrupted)
    r = cli(*args)
    assert r.exit_code == 130 and "--resume" in r.output
    first = batch_io.read_rows(out, "jsonl")
    assert [(x["document"], x["question"]) for x in first] == [(str(irc_file), q) for q in QUESTIONS]
    monkeypatch.setattr(InProcess, "run", real_run)
    r = cli(*args, "--resume")
    assert r.exit_code == cli_batch.FAILED_EXIT, r.output
    assert "resuming: 1 of 3 documents already done" in r.output and "broken.pdf" in r.output.splitlines()[-1]
    rows = batch_io.read_rows(out, "jsonl")
    keys = [(x["document"], x["question"]) for x in rows]
    assert len(keys) == len(set(keys)) == 5
    err = [x for x in rows if x["error"]]
    assert len(err) == 1 and err[0]["document"] == str(broken) and err[0]["question"] is None
    good = [x for x in rows if not x["error"]]
    assert all(x["answer_id"] and x["model"] and x["prefill_s"] is not None and x["spans"] is not None for x in good)
    assert good[3]["prefix_cache"] == "memory"  # the second question about a document did not read it again
    assert db_counts(model_home)["answers"] == 4  # the first document's answers were not asked (nor logged) twice
    assert not (tmp_path / "results.jsonl.partial.jsonl").exists()


@pytest.mark.integration
def test_extract_table(model_home, tmp_path):
    contract = tmp_path / "contract.txt"
    contract.write_text(CONTRACT)
    out, page = tmp_path / "table.csv", tmp_path / "table.html"
    r = cli("extract", contract, "--clauses", "governing-law,term", "-n", "4", "--threads", "1", "--out", out,
            "--html", page)
    assert r.exit_code == 0, r.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("document,governing-law,governing-law_page,expiration-date")
    assert len(lines) == 2 and lines[1].startswith(str(contract))
    html = page.read_text(encoding="utf-8")
    assert "<table>" in html and html.count('<a href="table_audit/answer-') == 2  # each cell links its audit page
    assert len(list((tmp_path / "table_audit").glob("answer-*.html"))) == 2
    assert db_counts(model_home)["answers"] == 2


def test_extract_eval_matching():
    """bench/extract_eval.py's scoring: a quote on the gold clause hits, another does not; a short answer counts
    when it is inside the gold passage, a yes/no never."""
    from bench.extract_eval import answer_in, hits
    gold = ["This Agreement shall be governed by the laws of the State of Michigan."]
    assert hits("governed by the laws of the State of Michigan", gold)
    assert not hits("This Agreement shall be renewable on an annual basis", gold)
    assert answer_in("Michigan.", gold) and not answer_in("Delaware.", gold) and not answer_in("Yes, the State", gold)


def test_sigterm_stops_a_run_like_ctrl_c():
    """A scheduler's SIGTERM becomes KeyboardInterrupt while a batch runs (rows written, workers stopped), and
    the previous handler comes back after."""
    import os
    import signal
    before = signal.getsignal(signal.SIGTERM)
    restore = cli_batch._term_as_interrupt()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_resume_takes_answers_the_log_has(home):
    """An answer logged just before a crash (in the log, not yet in the output) becomes a row on --resume
    instead of being asked again; answers from before the run, other models or other questions do not."""
    from docreader import store
    from docreader.document import Document
    doc = Document(str(Path("a.txt").resolve()), "txt", CONTRACT, [], {})  # the log keeps absolute paths
    db = store.open_db(write=True)
    row = {"question": QUESTIONS[0], "answer": 'Quote: "laws of the State of Delaware"\nAnswer: Delaware.',
           "model": "m", "mode": "sparse", "dsa": "{}", "prompt_tokens": 30, "document_tokens": 20, "new_tokens": 9,
           "dropped_turns": 0, "load_s": 0.1, "prefill_s": 1.0, "decode_s": 0.5, "tokens_per_s": 18.0,
           "provenance": "{}"}
    aid = store.save_answer(db, doc, row, [], quotes=[{"rank": 1, "text": "laws of the State of Delaware",
                                                       "verified": True, "char_start": 60, "char_end": 89,
                                                       "score": 100.0, "page": None, "label": "line 3",
                                                       "location": '{"label": "line 3"}'}])
    store.save_answer(db, doc, row | {"model": "other"}, [])
    store.save_answer(db, doc, row | {"question": "not in this run"}, [])
    questions = list(enumerate(QUESTIONS, 1))
    since = "2000-01-01T00:00:00"
    done: set = set()
    rows = batch_io.rows_from_log(["a.txt", "b.txt"], questions, "m", since, done)
    assert [(r["document"], r["question"], r["answer_id"]) for r in rows] == [("a.txt", QUESTIONS[0], aid)]
    assert rows[0]["short_answer"] == "Delaware." and rows[0]["quote"] == "laws of the State of Delaware"
    assert done == {("a.txt", QUESTIONS[0])}
    assert batch_io.rows_from_log(["a.txt"], questions, "m", since, done) == []  # already in the output
    assert batch_io.rows_from_log(["a.txt"], questions, "m", "2999-01-01T00:00:00", set()) == []  # before the run
