"""The SQLite log: numbered migrations, foreign keys, one transaction per answer."""

from __future__ import annotations

import json
import sqlite3

import pytest
import sqlite_utils

from docreader import store
from docreader.document import Document, Region
from docreader.errors import DocreaderError


def _doc(text="Page one text.\nPage two text.\n", path="contract.pdf") -> Document:
    cut = text.index("\n") + 1
    return Document(path, "pdf", text, [Region(0, cut, "page", 0, "p. 1", {"page_label": "1"}),
                                        Region(cut, len(text), "page", 1, "p. 2", {"page_label": "2"})],
                    {"kind": "contract"})


def _answer(**kw) -> dict:
    row = {"session_id": None, "question": "What?", "answer": "That.", "model": "m", "mode": "sparse",
           "dsa": json.dumps({"top_k": 8}), "prompt_tokens": 30, "document_tokens": 10, "new_tokens": 2,
           "dropped_turns": 0, "load_s": 0.1, "prefill_s": 0.2, "decode_s": 0.3, "tokens_per_s": 4.0}
    return row | kw


def _span(rank=1, start=0, end=4, **kw) -> dict:
    loc = {"char_start": start, "char_end": end, "page": 1, "label": "p. 1"}
    return {"rank": rank, "char_start": start, "char_end": end, "page": 1, "label": "p. 1", "score": 0.5,
            "location": json.dumps(loc)} | kw


def counts(db) -> dict:
    return {t: db[t].count for t in ("documents", "sessions", "answers", "spans")}


@pytest.fixture
def db(tmp_path):
    return store.open_db(tmp_path / "log.db")


def test_migrations_recorded_and_idempotent(tmp_path):
    path = tmp_path / "log.db"
    db = store.open_db(path)
    names = [r["name"] for r in db["_migrations"].rows]
    assert names == [fn.__name__ for fn in store.MIGRATIONS] and names[0] == "m001_initial"
    assert {"documents", "sessions", "answers", "spans"} <= set(db.table_names())
    aid = store.save_answer(db, _doc(), _answer(), [_span()])
    applied = list(db["_migrations"].rows)
    db.conn.close()
    again = store.open_db(path)  # reopening applies nothing twice and keeps the data
    assert list(again["_migrations"].rows) == applied
    assert again["answers"].count == 1 and store.get_answer(again, aid)["question"] == "What?"


def test_default_path_is_in_docreader_home(home):
    db = store.open_db()
    assert (home / "docreader.db").exists()
    assert "_migrations" in db.table_names()


def test_failed_migration_leaves_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "log.db"
    store.open_db(path).conn.close()

    def m999_broken(db):
        db["extra"].create({"id": int}, pk="id")
        db.execute("alter table answers add column note text")
        raise RuntimeError("migration failed half-way")

    applied = [fn.__name__ for fn in store.MIGRATIONS]
    monkeypatch.setattr(store, "MIGRATIONS", [*store.MIGRATIONS, m999_broken])
    with pytest.raises(RuntimeError):
        store.open_db(path)
    raw = sqlite_utils.Database(path)
    assert "extra" not in raw.table_names()
    assert "note" not in raw["answers"].columns_dict
    assert [r["name"] for r in raw["_migrations"].rows] == applied


def test_foreign_keys_on(db):
    assert db.execute("pragma foreign_keys").fetchone()[0] == 1
    with pytest.raises(sqlite3.IntegrityError):
        db["spans"].insert({"answer_id": 12345, "rank": 1, "char_start": 0, "char_end": 1})
    with pytest.raises(sqlite3.IntegrityError):
        db["answers"].insert(_answer(document_id="no-such-document"))
    assert counts(db) == {"documents": 0, "sessions": 0, "answers": 0, "spans": 0}


def test_save_answer_roundtrip_and_document_once(db):
    doc = _doc()
    a1 = store.save_answer(db, doc, _answer(), [_span(1, 0, 4), _span(2, 15, 19, page=2)])
    a2 = store.save_answer(db, doc, _answer(question="Again?"), [_span()])
    assert a2 == a1 + 1
    assert db["documents"].count == 1  # the text is stored once, keyed by its hash
    drow = store.get_document(db, doc.sha256)
    assert drow["text"] == doc.text and drow["chars"] == len(doc.text) and drow["kind"] == "contract"
    assert [Region(**r) for r in json.loads(drow["regions"])] == doc.regions
    row = store.get_answer(db, a1)
    assert [(s["rank"], s["char_start"], s["page"]) for s in row["spans"]] == [(1, 0, 1), (2, 15, 2)]
    assert row["document_id"] == doc.sha256 and row["created"]
    recent = store.recent_answers(db, 5)
    assert [r["id"] for r in recent] == [a2, a1] and recent[0]["document_path"].endswith("contract.pdf")
    assert store.list_documents(db)[0]["answers"] == 2


@pytest.mark.parametrize("bad", [{"no_such_column": 1}, {"score": object()}])  # unknown column; unbindable value
def test_save_answer_is_atomic(db, bad):
    """A span that cannot be inserted takes its answer and its (new) document with it."""
    spans = [_span(1), _span(2) | bad]
    with pytest.raises(sqlite3.Error):
        store.save_answer(db, _doc(), _answer(), spans)
    assert counts(db) == {"documents": 0, "sessions": 0, "answers": 0, "spans": 0}
    # the connection is usable afterwards and nothing of the failed answer reappears on commit
    aid = store.save_answer(db, _doc(), _answer(), [_span()])
    assert counts(db) == {"documents": 1, "sessions": 0, "answers": 1, "spans": 1}
    assert store.get_answer(db, aid)["spans"][0]["rank"] == 1


def test_failed_answer_keeps_earlier_rows(db):
    doc = _doc()
    store.save_answer(db, doc, _answer(), [_span()])
    with pytest.raises(sqlite3.Error):
        store.save_answer(db, doc, _answer(question="second"), [_span(bogus=1)])
    assert counts(db) == {"documents": 1, "sessions": 0, "answers": 1, "spans": 1}


def test_atomic_across_connections(tmp_path):
    """What another process sees: nothing of a failed answer (no commit happened mid-way)."""
    path = tmp_path / "log.db"
    db = store.open_db(path)
    with pytest.raises(sqlite3.Error):
        store.save_answer(db, _doc(), _answer(), [_span(), _span(bogus=1)])
    other = sqlite3.connect(path)
    assert other.execute("select count(*) from answers").fetchone()[0] == 0
    assert other.execute("select count(*) from documents").fetchone()[0] == 0


def test_sessions_and_history(db):
    doc = _doc()
    sid = store.new_session_id()
    assert db["sessions"].count == 0  # the row comes with the first answer
    store.save_answer(db, doc, _answer(session_id=sid, question="q1", answer="a1"), [], session_model="m")
    assert store.get_session(db)["id"] == sid and store.get_session(db, sid)["document_id"] == doc.sha256
    store.save_answer(db, doc, _answer(question="unrelated"), [])
    store.save_answer(db, doc, _answer(session_id=sid, question="q2", answer="a2"), [], session_model="m")
    assert store.session_history(db, sid) == [("q1", "a1"), ("q2", "a2")]
    assert [r["question"] for r in store.recent_answers(db, 10, sid)] == ["q2", "q1"]
    assert db["sessions"].count == 1 and store.get_session(db, sid)["model"] == "m"
    sid2 = store.new_session_id()
    store.save_answer(db, doc, _answer(session_id=sid2), [], session_model="m")
    assert store.get_session(db)["id"] == sid2  # --continue takes the latest
    with pytest.raises(sqlite3.IntegrityError):  # a session's answers must belong to a real session
        store.save_answer(db, doc, _answer(session_id="nope"), [])
    assert db["answers"].count == 4


def test_missing_rows_are_user_errors(db):
    with pytest.raises(DocreaderError, match="no answer with id 7"):
        store.get_answer(db, 7)
    with pytest.raises(DocreaderError, match="no earlier chat session"):
        store.get_session(db)
    with pytest.raises(DocreaderError, match="no chat session abc"):
        store.get_session(db, "abc")


def test_concurrent_first_open(tmp_path):
    """Several processes (here: threads with their own connections) opening a new log at once all succeed."""
    import threading

    for trial in range(5):
        path = tmp_path / f"log{trial}.db"
        barrier, errors = threading.Barrier(6), []

        def open_it():
            barrier.wait()
            try:
                db = store.open_db(path)
                store.save_answer(db, _doc(), _answer(), [_span()])
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(e))

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        db = store.open_db(path)
        assert [r["name"] for r in db["_migrations"].rows] == [fn.__name__ for fn in store.MIGRATIONS]
        assert counts(db) == {"documents": 1, "sessions": 0, "answers": 6, "spans": 6}


def test_full_disk_is_one_log_error_and_leaves_nothing(db, tmp_path):
    pages = db.conn.execute("pragma page_count").fetchone()[0]
    db.conn.execute(f"pragma max_page_count = {pages}")  # the disk is full from here on
    with pytest.raises(store.LogError) as e:
        store.save_answer(db, _doc("x" * 20000 + "\nlast page\n"), _answer(), [_span()])
    assert str(e.value) == f"{tmp_path / 'log.db'}: the disk is full (database or disk is full)"
    db.conn.execute("pragma max_page_count = 1073741823")
    assert counts(db) == {"documents": 0, "sessions": 0, "answers": 0, "spans": 0}


def test_unsaved_answer_is_kept_whole_beside_the_log_or_in_tmp(tmp_path, monkeypatch):
    log = tmp_path / "log.db"
    kept = store.keep_unsaved({"answer": "Forty-two \x1b."}, log)
    assert kept.parent == tmp_path / "unsaved" and json.loads(kept.read_text())["answer"] == "Forty-two \x1b."
    assert [p.name for p in kept.parent.iterdir()] == [kept.name]  # no temporary file left behind
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "unsaved").write_text("a file where the folder should be")
    monkeypatch.setattr(store.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert store.keep_unsaved({"answer": "x"}, blocked / "log.db").parent == tmp_path / "tmp"


def _quote(rank=1, verified=True, **kw) -> dict:
    loc = {"char_start": 0, "char_end": 4, "page": 1, "label": "p. 1"} if verified else {}
    return {"rank": rank, "text": "Page", "verified": verified, "char_start": loc.get("char_start"),
            "char_end": loc.get("char_end"), "score": 100.0 if verified else 0.0, "page": loc.get("page"),
            "label": loc.get("label", ""), "location": json.dumps(loc)} | kw


def test_quotes_roundtrip_beside_spans(db):
    aid = store.save_answer(db, _doc(), _answer(), [_span()],
                            quotes=[_quote(1), _quote(2, verified=False, text="Not there")])
    row = store.get_answer(db, aid)
    assert [(q["rank"], q["text"], q["verified"], q["char_start"], q.get("label")) for q in row["quotes"]] == [
        (1, "Page", True, 0, "p. 1"), (2, "Not there", False, None, None)]
    assert len(row["spans"]) == 1
    [recent] = store.recent_answers(db)
    assert (recent["quotes_verified"], recent["quotes_unverified"], recent["spans"]) == (1, 1, 1)
    with pytest.raises(sqlite3.IntegrityError):  # a quote belongs to an answer
        db["quotes"].insert({"answer_id": 12345, "rank": 1, "text": "x", "verified": 0})
    db.execute("delete from spans")  # (spans have no ON DELETE CASCADE; quotes go with their answer)
    db.execute("delete from answers")
    assert db["quotes"].count == 0


def test_a_bad_quote_takes_its_answer_with_it(db):
    with pytest.raises(sqlite3.Error):
        store.save_answer(db, _doc(), _answer(), [_span()], quotes=[_quote(1), _quote(2, bogus=1)])
    assert counts(db) == {"documents": 0, "sessions": 0, "answers": 0, "spans": 0} and db["quotes"].count == 0


def test_old_log_gains_the_quotes_table(tmp_path, monkeypatch):
    """A log written before m003 (answers and spans, no quotes table) opens, migrates and keeps its rows."""
    path = tmp_path / "log.db"
    old = store.MIGRATIONS[:store.MIGRATIONS.index(store.m003_quotes)]  # (later ones came later still)
    monkeypatch.setattr(store, "MIGRATIONS", old)
    monkeypatch.setattr(store, "TABLES", {t: m for t, m in store.TABLES.items() if m in {f.__name__ for f in old}})
    db = store.open_db(path)
    aid = store.save_answer(db, _doc(), _answer(), [_span()])
    assert "quotes" not in db.table_names()
    db.conn.close()
    monkeypatch.undo()
    db = store.open_db(path)
    assert [r["name"] for r in db["_migrations"].rows] == [fn.__name__ for fn in store.MIGRATIONS]
    row = store.get_answer(db, aid)
    assert row["quotes"] == [] and len(row["spans"]) == 1 and store.recent_answers(db)[0]["quotes_verified"] == 0
    aid2 = store.save_answer(db, _doc(), _answer(), [], quotes=[_quote()])
    assert store.get_answer(db, aid2)["quotes"][0]["verified"] is True
    db.conn.close()
    raw = sqlite3.connect(path)  # a log whose quotes table vanished although m003 is recorded is damaged
    raw.execute("drop table quotes")
    raw.commit()
    raw.close()
    with pytest.raises(store.LogError, match="table quotes missing"):
        store.open_db(path)
