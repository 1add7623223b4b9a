"""The log as a user searches and prunes it: `docreader log` filters and full-text search, `log path`, `log rm`,
the migrations that add search, answer details, an index and a span-text view to logs written before."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from types import SimpleNamespace

import pytest
import sqlite_utils

from conftest import db_counts
from test_cli import NEW, expect_error, run
from test_store import _answer, _doc, _quote, _span
from docreader import store
from docreader.cli_log import parse_since
from docreader.engine import Answer, Reader

NEW_MIGRATIONS = ("m004_answer_details", "m005_search", "m006_answer_spans_view")


def _old_log(path, monkeypatch) -> None:
    """A log as written before search: migrations up to m003, two answers (one with a span and a quote)."""
    with monkeypatch.context() as m:
        m.setattr(store, "MIGRATIONS", [fn for fn in store.MIGRATIONS if fn.__name__ not in NEW_MIGRATIONS])
        m.setattr(store, "TABLES", {t: v for t, v in store.TABLES.items() if v not in NEW_MIGRATIONS})
        db = store.open_db(path)
        store.save_answer(db, _doc(), _answer(question="Who pays the rent?", answer="The tenant pays."),
                          [_span()], quotes=[_quote()])
        store.save_answer(db, _doc(), _answer(question="When is it due?", answer="On the first day."), [])
        assert "answers_fts" not in db.table_names() and "stop_reason" not in db["answers"].columns_dict
        db.conn.close()


def _ids(rows) -> list[int]:
    return [r["id"] for r in rows]


# -- the store -------------------------------------------------------------------------------------------------

def test_search_covers_old_answers_and_new_ones(tmp_path, monkeypatch):
    """m005 builds the index from the answers already logged; triggers keep it in step with new and deleted ones."""
    path = tmp_path / "log.db"
    _old_log(path, monkeypatch)
    db = store.open_db(path)
    assert _ids(store.recent_answers(db, query="tenant")) == [1]  # logged before the index existed
    new = store.save_answer(db, _doc(), _answer(question="Rent again?", answer="rent, rent and more rent"), [])
    assert _ids(store.recent_answers(db, query="rent")) == [new, 1]  # best match first, questions included
    assert _ids(store.recent_answers(db, 1, query="rent")) == [new]
    assert store.recent_answers(db, query="NOT rent") == []  # words are taken literally, not as FTS syntax
    store.delete_answers(db, [new])
    assert _ids(store.recent_answers(db, query="rent")) == [1]
    with pytest.raises(store.DocreaderError, match="has no words to search for"):
        store.recent_answers(db, query=' " ')
    assert db["answers"].detect_fts() == "answers_fts"  # what Datasette looks for to offer a search box


def test_new_migrations_on_an_old_log_are_all_or_nothing(tmp_path, monkeypatch):
    """A failure after the FTS table, the new columns and the view were made takes them all back: the search
    migration must run inside the migrations' transaction (no implicit COMMIT from sqlite-utils)."""
    path = tmp_path / "log.db"
    _old_log(path, monkeypatch)

    def m999_broken(db):
        raise RuntimeError("migration failed half-way")

    monkeypatch.setattr(store, "MIGRATIONS", [*store.MIGRATIONS, m999_broken])
    with pytest.raises(RuntimeError):
        store.open_db(path)
    raw = sqlite_utils.Database(path)
    assert "answers_fts" not in raw.table_names() and raw.view_names() == []
    assert "stop_reason" not in raw["answers"].columns_dict
    assert not [r for r in raw["_migrations"].rows if r["name"] in NEW_MIGRATIONS]
    monkeypatch.undo()
    db = store.open_db(path)  # and the next open migrates for real
    assert _ids(store.recent_answers(db, query="first")) == [2]


def test_answer_details_index_and_document_created(tmp_path):
    db = store.open_db(tmp_path / "log.db")
    assert {"stop_reason", "cached_tokens", "rope_factor"} <= set(db["answers"].columns_dict)
    plan = " ".join(str(r) for r in db.execute("explain query plan select id from answers where document_id = ?",
                                               ["x"]).fetchall())
    assert "idx_answers_document_id" in plan
    store.save_answer(db, _doc(), _answer(), [])
    db.conn.execute("update documents set created = '2020-01-01T00:00:00'")
    db.conn.commit()
    store.save_answer(db, _doc(path="moved.pdf"), _answer(), [])
    [row] = db["documents"].rows
    assert row["created"] == "2020-01-01T00:00:00" and row["path"].endswith("moved.pdf")  # first seen, last path


def test_delete_takes_spans_and_quotes_in_one_transaction(tmp_path):
    db = store.open_db(tmp_path / "log.db")
    a1 = store.save_answer(db, _doc(), _answer(), [_span(1), _span(2)], quotes=[_quote()])
    a2 = store.save_answer(db, _doc(), _answer(), [_span()])
    with pytest.raises(sqlite3.IntegrityError):  # why `rm` deletes the spans itself: they have no cascade
        db.conn.execute("delete from answers where id = ?", [a1])
    db.conn.rollback()
    with pytest.raises(store.DocreaderError, match="no answer with id 99 .*nothing was deleted"):
        store.delete_answers(db, [a2, 99])
    assert db["answers"].count == 2 and db["spans"].count == 3  # a2 is still there: all or nothing
    assert store.delete_answers(db, [a1, a1]) == {a1: (2, 1)}
    assert _ids(store.recent_answers(db)) == [a2] and db["spans"].count == 1 and db["quotes"].count == 0
    assert db["documents"].count == 1


def test_span_text_view(tmp_path):
    """The view cuts each span from its document by character, as Python does (non-ASCII before it)."""
    text = "Ünïcödé — préambule.\nLa clause clé est ici.\n"
    doc = _doc(text)
    start = text.index("clause")
    db = store.open_db(tmp_path / "log.db")
    aid = store.save_answer(db, doc, _answer(question="Où?"), [_span(1, start, start + 10)])
    [row] = db["answer_spans"].rows
    assert row["span_text"] == text[start:start + 10] == "clause clé"
    assert (row["answer_id"], row["question"], row["rank"]) == (aid, "Où?", 1)
    assert row["document_path"].endswith("contract.pdf")


def _answer_object(**kw) -> Answer:
    return Answer("The tenant.", "Who pays?", _doc(), [], "m", "sparse", {"top_k": 8}, 30, 10, 2, 0,
                  "max_tokens", 2.0, 8192, {"load_s": 0.1, "prefill_s": 0.2, "decode_s": 0.3, "tokens_per_s": 4.0,
                                            "cached_prefix_tokens": 7}, **kw)


def test_reader_save_stores_stop_reason_cached_tokens_and_rope_factor(tmp_path):
    reader = Reader(db_path=tmp_path / "log.db")  # (no model is loaded to save)
    aid = reader.save(_answer_object())
    row = store.get_answer(store.open_db(tmp_path / "log.db"), aid)
    assert (row["stop_reason"], row["cached_tokens"], row["rope_factor"]) == ("max_tokens", 7, 2.0)
    # an answer object from elsewhere without them (older code, an integration) is logged with NULLs
    bare = {f.name: getattr(_answer_object(), f.name) for f in dataclasses.fields(Answer)
            if f.name not in ("stop_reason", "rope_factor")}
    bare["timings"] = {k: v for k, v in bare["timings"].items() if k != "cached_prefix_tokens"}
    aid = reader.save(SimpleNamespace(**bare))
    row = store.get_answer(store.open_db(tmp_path / "log.db"), aid)
    assert (row["stop_reason"], row["cached_tokens"], row["rope_factor"]) == (None, None, None)


# -- the command line ------------------------------------------------------------------------------------------

def _seed(home) -> dict[str, int]:
    """Four answers: two documents, two models, a chat session, created on different days (UTC)."""
    db = store.open_db()
    sid = store.new_session_id()
    ids = {"old": store.save_answer(db, _doc(), _answer(question="Who pays the rent?", answer="The tenant."), [])}
    ids["other_doc"] = store.save_answer(db, _doc("Another text.\nPage two.\n", path=str(home / "lease.txt")),
                                         _answer(question="What is leased?", answer="A flat.", model="big"), [])
    ids["chat"] = store.save_answer(db, _doc(), _answer(session_id=sid, question="And the deposit?",
                                                        answer="Rent of one month.", stop_reason="max_tokens"),
                                    [_span()], session_model="m")
    ids["new"] = store.save_answer(db, _doc(), _answer(question="Notice period?", answer="Ninety days."), [])
    for key, day in (("old", "2026-01-01"), ("other_doc", "2026-02-01"), ("chat", "2026-03-01"), ("new", "2026-04-01")):
        db.conn.execute("update answers set created = ? where id = ?", [f"{day}T12:00:00", ids[key]])
    db.conn.commit()
    ids["session"] = sid
    return ids


def _listed(*args) -> list[int]:
    return [r["id"] for r in json.loads(run("log", "--json", *args).stdout)]


def test_log_filters_and_search(home):
    ids = _seed(home)
    assert _listed() == [ids["new"], ids["chat"], ids["other_doc"], ids["old"]]  # no filter: newest first
    assert sorted(_listed("-q", "rent")) == sorted([ids["chat"], ids["old"]])
    assert _listed("-q", "tenant") == [ids["old"]]
    assert _listed("--model", "big") == [ids["other_doc"]]
    sha = _doc().sha256
    assert _listed("--document", sha[:10]) == [ids["new"], ids["chat"], ids["old"]]
    assert _listed("--document", "lease.txt") == [ids["other_doc"]]
    assert _listed("--since", "2026-03-01") == [ids["new"], ids["chat"]]
    assert _listed("--since", "2026-03-01T12:00:01") == [ids["new"]]
    assert _listed("--since", "1d") == []  # (the seeded answers are dated 2026-01 … 2026-04)
    assert _listed("-q", "rent", "--since", "2026-02-01", "-m", "m", "-d", sha[:8]) == [ids["chat"]]
    assert run("log", "-q", "nothing-like-this").stdout == "no answers match\n"
    expect_error("log", "--since", "yesterday", reason="--since takes an age (30m, 2h, 7d, 1w) or a UTC date")
    expect_error("log", "-q", '""', reason="has no words to search for")


def test_parse_since():
    now = 1_800_000_000.0  # 2027-01-15T08:00:00 UTC
    assert parse_since("2h", now) == "2027-01-15T06:00:00" and parse_since("1w", now) == "2027-01-08T08:00:00"
    assert parse_since("30m", now) == "2027-01-15T07:30:00" and parse_since(" 2026-12-01 ") == "2026-12-01T00:00:00"
    assert parse_since("2026-12-01 09:30") == "2026-12-01T09:30:00" == parse_since("2026-12-01T09:30:00Z")
    assert parse_since("999999999999d", now) == "1970-01-01T00:00:00"  # an age before 1970 is not an overflow
    with pytest.raises(store.DocreaderError):
        parse_since("2026-13-01")


def test_log_shows_session_stop_reason_and_nests_dsa(home):
    ids = _seed(home)
    out = run("log").stdout
    chat = out[out.index(f"#{ids['chat']}"):out.index(f"#{ids['other_doc']}")]
    assert f"session {ids['session']}" in chat.splitlines()[0] and "stopped: max_tokens" in chat
    assert "session" not in out[out.index(f"#{ids['new']}"):out.index(f"#{ids['chat']}")]
    [row] = json.loads(run("log", "--json", "-n", "1").stdout)
    assert row["dsa"] == {"top_k": 8} and row["provenance"] is None and row["session_id"] is None
    rows = json.loads(run("log", "--json", "--session", ids["session"]).stdout)
    assert [r["id"] for r in rows] == [ids["chat"]] and rows[0]["stop_reason"] == "max_tokens"


def test_log_path_and_rm(home):
    assert run("log", "path").stdout == f"{home / 'docreader.db'}\n"
    ids = _seed(home)
    before = db_counts(home)
    expect_error("log", "rm", ids["chat"], 999, reason="no answer with id 999 (see `docreader log`); nothing was")
    assert db_counts(home) == before
    assert run("log", "rm", ids["chat"], ids["old"]).stdout == (f"deleted answer #{ids['chat']} (1 span, 0 quotes)\n"
                                                               f"deleted answer #{ids['old']} (0 spans, 0 quotes)\n")
    assert db_counts(home) == {**before, "answers": before["answers"] - 2, "spans": before["spans"] - 1}
    assert _listed("-q", "rent") == [] and _listed() == [ids["new"], ids["other_doc"]]
    assert run("log", "-n", "1").stdout.startswith(f"#{ids['new']}")  # `log` alone still lists


@pytest.mark.integration
def test_ask_logs_stop_reason_cached_tokens_and_rope_factor(model_home, irc_file):
    """A real answer cut by the token limit, asked twice (the second reads the document from the cache)."""
    outs = [json.loads(run("ask", irc_file, q, "--json", "--max-new-tokens", NEW).stdout)
            for q in ("Who is Seveas?", "Who?")]
    rows = {r["id"]: r for r in json.loads(run("log", "--json").stdout)}
    for out in outs:
        row = rows[out["id"]]
        assert (row["stop_reason"], row["rope_factor"]) == (out["stop_reason"], out["rope_factor"])
        assert row["cached_tokens"] == out["timings"]["cached_prefix_tokens"] and row["dsa"] == out["dsa"]
    assert rows[outs[0]["id"]]["cached_tokens"] == 0 < rows[outs[1]["id"]]["cached_tokens"]
