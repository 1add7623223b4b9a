"""The command line through typer's CliRunner, each test in its own DOCREADER_HOME.

Fast tests cover bad input, the log commands and models; `integration` tests run the real default model on
a short real document (the first lines of the Ubuntu IRC sample, a small Markdown file, a small PDF)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import corpus
from conftest import db_counts
from test_langchain_support import TINY_DSA, tiny_model_dir, write_contract  # (resolves the real model dir now)
from docreader import models, store
from docreader.cli import app
from docreader.document import Document, Region
from docreader.loaders import load

NEW = "8"  # tokens generated per answer in integration tests: enough to stream, short enough to be quick
NO_ROWS = {"documents": 0, "sessions": 0, "answers": 0, "spans": 0}


def run(*args, input=None, ok=True):
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if ok:
        assert result.exit_code == 0, result.output
    return result


def expect_error(*args, name: str | None = None, reason: str = "", input=None) -> str:
    """One line `error: …` on stderr naming the file and the reason; exit 1; nothing on stdout."""
    result = run(*args, input=input, ok=False)
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    line = result.stderr.strip()
    if name:
        assert name in line
    assert reason in line, line
    return line


# -- bad input: one line, exit 1, no traceback, nothing in the database -------------------------------------

def bad_inputs(tmp: Path) -> list[tuple[list, str, str]]:
    """(extra args, file, expected reason) for each kind of bad input the CLI must reject."""
    out = []
    out.append(([], str(tmp / "missing.pdf"), "no such file"))
    binary = corpus.binary_garbage(tmp / "blob.bin")
    out.append(([], str(binary), ""))
    unsupported = tmp / "data.xyz"
    unsupported.write_bytes(b"\x00\x01\x02\x03\xff\xfe" * 200)
    out.append(([], str(unsupported), ""))
    corrupt = tmp / "corrupt.pdf"
    corrupt.write_bytes(corpus.pdf_bytes(["some text"])[:200])
    out.append(([], str(corrupt), ""))
    locked = corpus.make_pdf(tmp / "locked.pdf", ["secret clause"], password="hunter2")
    out.append(([], str(locked), "encrypted PDF — pass --password"))
    out.append((["--password", "wrong"], str(locked), "wrong password"))
    empty = tmp / "empty.txt"
    empty.write_text("  \n")
    out.append(([], str(empty), "empty document"))
    out.append(([], str(tmp), "is a directory"))
    blank = corpus.make_blank_pdf(tmp / "scan.pdf")
    out.append(([], str(blank), "no extractable text"))
    bomb = corpus.zip_bomb(tmp / "bomb.docx")
    out.append(([], str(bomb), ""))
    return out


def test_bad_input_ask(home, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for extra, path, reason in bad_inputs(docs):
        expect_error("ask", path, "What is this?", *extra, name=path, reason=reason)
    assert db_counts(home) == NO_ROWS


def test_bad_input_chat(home, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for extra, path, reason in bad_inputs(docs):
        expect_error("chat", path, *extra, name=path, reason=reason, input="hello\n")
    assert db_counts(home) == NO_ROWS


@pytest.mark.parametrize("question", ["", "   ", "\n"])
def test_empty_question(home, irc_file, question):
    expect_error("ask", irc_file, question, name=str(irc_file), reason="the question is empty")
    assert db_counts(home) == NO_ROWS


def test_ask_needs_a_question(home, irc_file, tmp_path):
    expect_error("ask", irc_file, name=str(irc_file), reason="give a QUESTION")
    expect_error("ask", irc_file, "--questions", tmp_path / "nope.txt", name="nope.txt",
                 reason="cannot read the questions")
    expect_error("ask", irc_file, "-q", "Who?", "-q", " ", name=str(irc_file), reason="the question is empty")
    assert db_counts(home) == NO_ROWS


def test_bad_model_option(home, irc_file, tmp_path):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text('{"model_type": "gpt2"}')
    for cmd in (["ask", irc_file, "Who?"], ["chat", irc_file]):
        expect_error(*cmd, "--model", tmp_path / "nope", name=str(tmp_path / "nope"), reason="not a model directory",
                     input="Who?\n")
        expect_error(*cmd, "--model", tmp_path / "gpt", reason="model type 'gpt2' is not supported", input="Who?\n")
    assert db_counts(home) == NO_ROWS


def test_format_override_on_wrong_content(home, irc_file):
    expect_error("ask", irc_file, "Who?", "--format", "pdf", name=str(irc_file))
    assert db_counts(home) == NO_ROWS


def test_chat_needs_a_file_or_session(home):
    expect_error("chat", reason="give a FILE, or --continue / --session ID")
    expect_error("chat", "-c", reason="no earlier chat session to continue")
    expect_error("chat", "--session", "abc123", reason="no chat session abc123")
    assert db_counts(home) == NO_ROWS


def test_bad_home_and_bad_database(tmp_path, monkeypatch):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    monkeypatch.setenv("DOCREADER_HOME", str(not_a_dir))
    expect_error("log", name=str(not_a_dir), reason="File exists")
    home = tmp_path / "home"
    home.mkdir()
    (home / "docreader.db").write_bytes(b"this is not a database at all, just text " * 50)
    monkeypatch.setenv("DOCREADER_HOME", str(home))
    for cmd in (["log"], ["documents"], ["audit", "1"], ["chat", "-c"]):
        expect_error(*cmd, name=str(home / "docreader.db"), reason="file is not a database")


def test_real_process_prints_no_traceback(home, tmp_path):
    """The installed entry point, not CliRunner: what a user sees on a real terminal."""
    env = {**os.environ, "DOCREADER_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", "from docreader.cli import app; app()", "ask",
                           str(tmp_path / "nope.pdf"), "Why?"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"error: {tmp_path / 'nope.pdf'}: no such file\n"


# -- log, audit, documents, models on a prepared database ------------------------------------------------------

def seed(home: Path) -> tuple[Document, list[int]]:
    text = "Page one says hello.\n\nPage two says goodbye.\n"
    doc = Document(str(home / "c.pdf"), "pdf", text,
                   [Region(0, 20, "page", 0, "p. 1", {"page_label": "1"}),
                    Region(22, 44, "page", 1, "p. 2", {"page_label": "2"})], {"kind": "contract"})
    db = store.open_db()
    ids = []
    for i, (q, a) in enumerate([("Who says hello?", "Page one."), ("And goodbye?", "Page two " * 30)]):
        loc = doc.locate(22, 43) if i else doc.locate(0, 19)
        row = {"question": q, "answer": a, "model": "smollm2-135m-instruct", "mode": "sparse",
               "dsa": json.dumps({"top_k": 64}), "prompt_tokens": 90 + i, "document_tokens": 12, "new_tokens": 3,
               "dropped_turns": 0, "load_s": 1.0, "prefill_s": 0.5, "decode_s": 0.2, "tokens_per_s": 10.0}
        span = {"rank": 1, "char_start": loc["char_start"], "char_end": loc["char_end"], "page": loc["page"],
                "label": loc["label"], "score": 0.25, "location": json.dumps(loc)}
        ids.append(store.save_answer(db, doc, row, [span]))
    return doc, ids


def test_log_documents_audit_empty(home):
    assert run("log").stdout == "no answers yet\n"
    assert json.loads(run("log", "--json").stdout) == []
    assert run("documents").stdout == "" and json.loads(run("documents", "--json").stdout) == []
    expect_error("audit", "99", reason="no answer with id 99 (see `docreader log`)")


def test_log_documents_audit(home):
    doc, (a1, a2) = seed(home)
    out = run("log").stdout
    assert out.index(f"#{a2}") < out.index(f"#{a1}")  # newest first
    assert "Q: Who says hello?" in out and "A: Page one." in out and "…" in out  # long answers are cut
    rows = json.loads(run("log", "--json", "-n", "1").stdout)
    assert [r["id"] for r in rows] == [a2] and rows[0]["document_path"] == str(Path(doc.path).resolve())
    docs = json.loads(run("documents", "--json").stdout)
    assert [(d["id"], d["answers"], d["format"]) for d in docs] == [(doc.sha256, 2, "pdf")]
    assert doc.sha256[:12] in run("documents").stdout
    audit = json.loads(run("audit", a2, "--json").stdout)
    assert audit["question"] == "And goodbye?" and audit["dsa"] == {"top_k": 64}
    assert audit["document"] == {"path": str(Path(doc.path).resolve()), "sha256": doc.sha256}
    [span] = audit["spans"]
    assert span["text"] == "Page two says goodbye" == doc.text[span["char_start"] : span["char_end"]]
    assert (span["page"], span["page_label"], span["label"], span["rank"]) == (2, "2", "p. 2", 1)
    text = run("audit", a1).stdout
    assert f"Answer #{a1}" in text and "Q: Who says hello?" in text and "p. 1 · chars 0–19" in text
    assert "│ Page one says hello" in text


def test_models_commands(home, real_model_dir):
    out = run("models", "list").stdout
    assert re.search(r"^\* smollm2-135m-instruct\s+not installed", out, re.M)
    expect_error("models", "path", reason="the default model is not installed")
    (home / "models").mkdir()
    os.symlink(real_model_dir, home / "models" / real_model_dir.name)
    rows = json.loads(run("models", "list", "--json").stdout)
    assert rows[0]["installed"] is True and rows[0]["default"] is True
    assert run("models", "path").stdout.strip() == str(home / "models" / models.DEFAULT_MODEL)
    assert run("models", "install").stdout.strip() == str(home / "models" / models.DEFAULT_MODEL)  # no-op
    expect_error("models", "path", str(home / "nope"), name=str(home / "nope"), reason="not a model directory")


# -- the real default model ------------------------------------------------------------------------------------

def check_spans(spans: list[dict], doc: Document, fields: tuple[str, ...]) -> None:
    assert spans, "no spans"
    assert [s["rank"] for s in spans] == list(range(1, len(spans) + 1))
    assert [s["score"] for s in spans] == sorted((s["score"] for s in spans), reverse=True)
    for s in spans:
        assert 0 <= s["char_start"] < s["char_end"] <= len(doc.text)
        assert s["text"] == doc.text[s["char_start"] : s["char_end"]] and s["text"].strip()
        assert s["label"] and s["line"] >= 1
        for f in fields:
            assert f in s, (f, s)


@pytest.mark.integration
def test_ask_json_audit_log(model_home, irc_file):
    doc = load(str(irc_file))
    knobs = ["--top-k", "96", "--n-blocks", "4", "--local-window", "32"]  # the DSA knobs reach the model
    out = json.loads(run("ask", irc_file, "Who buys music from iTunes?", "--json", "--max-new-tokens", NEW, *knobs).stdout)
    assert (out["dsa"]["top_k"], out["dsa"]["n_blocks"], out["dsa"]["local_window"]) == (96, 4, 32)
    assert out["answer"].strip() and out["question"] == "Who buys music from iTunes?"
    assert out["mode"] == "sparse" and out["model"] == models.DEFAULT_MODEL
    assert out["document"]["sha256"] == doc.sha256 and out["document"]["format"] == "chat"
    tokens = out["tokens"]
    assert 0 < tokens["document"] < tokens["prompt"] and 1 <= tokens["new"] <= int(NEW)
    assert {"load_s", "prefill_s", "decode_s", "tokens_per_s", "cached_prefix_tokens"} <= set(out["timings"])
    assert out["native_window"] == 8192 and out["rope_factor"] == 1.0 and out["stop_reason"] in ("eos", "max_tokens")
    check_spans(out["spans"], doc, ("message", "speaker", "time", "line"))
    assert all(s["label"].startswith(f"message {s['message']} — {s['speaker']}") for s in out["spans"])
    # the log has it, and audit shows the very same spans
    assert out["id"] and db_counts(model_home) == {"documents": 1, "sessions": 1, "answers": 1,
                                                    "spans": len(out["spans"])}
    audit = json.loads(run("audit", out["id"], "--json").stdout)
    assert audit["answer"] == out["answer"] and audit["prompt_tokens"] == tokens["prompt"]
    assert audit["dsa"] == out["dsa"] and audit["mode"] == "sparse"
    key = lambda s: (s["rank"], s["char_start"], s["char_end"], s["text"], s["label"], s.get("message"))
    assert [key(s) for s in audit["spans"]] == [key(s) for s in out["spans"]]
    # what produced the spans: the same record in --json and the log, named by audit
    prov = out["provenance"]
    assert audit["provenance"] == prov and prov["indexer"]["trained"] and prov["weighting"] == "picks"
    assert prov["dsa"]["top_k"] == 96 and prov["attention"] == "sparse" and prov["code"]["code_sha256"]
    assert prov["cpu_kernel"].startswith(("kernel/", "torch")) and sum(prov["paths"].values()) > 0
    text = run("audit", out["id"]).stdout
    assert out["spans"][0]["label"] in text and "│ " in text
    assert f"indexer {prov['indexer']['sha256'][:12]}" in text and prov["cpu_kernel"] in text
    assert "Who buys music from iTunes?" in run("log", "-n", "1").stdout
    assert json.loads(run("documents", "--json").stdout)[0]["answers"] == 1
    # --no-log answers without writing
    run("ask", irc_file, "Who is Seveas?", "--json", "--max-new-tokens", "2", "--no-log")
    assert db_counts(model_home)["answers"] == 1


FACTS = ["Orders ship within 3 business days from our warehouse in Leeds.",
         "Returns are accepted for 30 days with a receipt; refunds take a week.",
         "Every kettle carries a two-year warranty against defects in manufacture.",
         "Support answers email on weekdays between nine and five, UK time.",
         "Gift cards never expire and can be used in any of our shops.",
         "Delivery is free on orders over fifty pounds within the mainland.",
         "Large items are delivered by a two-person team on a booked day.",
         "Prices include VAT at the standard rate unless stated otherwise.",
         "Student discounts of ten percent apply with a valid card.",
         "The shop in York opens at eight on Saturdays and closes at six."]


def long_sample(tmp: Path, fmt: str) -> Path:
    """A ~400-token document of each generated format, so that spans lie beyond the sink."""
    if fmt == "docx":
        blocks = [("h1", "Store policy")] + [b for i, f in enumerate(FACTS)
                                             for b in (("h2", f"{i + 1}. Topic {i + 1}"), ("p", f"{f} " * 2))]
        return corpus.make_docx(tmp / "policy.docx", blocks=blocks)
    if fmt == "epub":
        return corpus.make_epub(tmp / "policy.epub", [(f"Chapter {i + 1}", f"<h1>Chapter {i + 1}</h1><p>{f} {f}</p>")
                                                      for i, f in enumerate(FACTS)])
    if fmt == "html":
        body = "".join(f"<h2>Topic {i + 1}</h2><p>{f} {f}</p>" for i, f in enumerate(FACTS))
        (tmp / "policy.html").write_text(f"<html><body><h1>Store policy</h1>{body}</body></html>", encoding="utf-8")
        return tmp / "policy.html"
    speakers = ["alice", "bob", "carol"]
    if fmt == "json":
        rows = [{"author": speakers[i % 3], "time": f"14:{i:02d}", "text": f} for i, f in enumerate(FACTS * 2)]
        (tmp / "chat.json").write_text(json.dumps(rows), encoding="utf-8")
        return tmp / "chat.json"
    lines = [f"12/31/23, 14:{i:02d} - {speakers[i % 3]}: {f}" for i, f in enumerate(FACTS * 2)]
    (tmp / "chat.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp / "chat.txt"


@pytest.mark.integration
@pytest.mark.parametrize("fmt,fields,label", [("docx", ("section", "line"), r"(\d+\. Topic \d+|Store policy|headers, footers and notes), line \d+"),
                                               ("epub", ("section", "line"), r"Chapter \d+, line \d+"),
                                               ("html", ("section", "line"), r"(Topic \d+|Store policy), line \d+"),
                                               ("json", ("message", "speaker", "time"), r"message \d+ — \w+, 14:\d\d"),
                                               ("whatsapp", ("message", "speaker", "time"), r"message \d+ — \w+")])
def test_ask_cites_every_format_in_its_own_terms(model_home, tmp_path, fmt, fields, label):
    path = long_sample(tmp_path, fmt)
    doc = load(str(path))
    out = json.loads(run("ask", path, "Where is the warehouse?", "--json", "--max-new-tokens", "4").stdout)
    assert out["document"]["format"] == doc.format and out["tokens"]["document"] > 250
    check_spans(out["spans"], doc, fields)
    assert all(re.match(label, s["label"]) for s in out["spans"]), [s["label"] for s in out["spans"]]


@pytest.mark.integration
def test_ask_streams_dense_markdown(model_home, tmp_path):
    md = tmp_path / "notes.md"
    sections = [("Shipping", "Orders ship within 3 business days from our warehouse in Leeds."),
                ("Returns", "Returns are accepted for 30 days with a receipt; refunds take a week."),
                ("Warranty", "Every kettle carries a two-year warranty against defects in manufacture."),
                ("Support", "Support answers email on weekdays between nine and five, UK time.")]
    # long enough (~400 tokens) that document tokens lie outside the sink and the local window
    md.write_text("# Store policy\n\n" + "".join(f"## {h}\n\n{(t + ' ') * 4}\n\n" for h, t in sections),
                  encoding="utf-8")
    doc = load(str(md))
    result = run("ask", md, "How long do I have to return an item?", "--dense", "--max-new-tokens", NEW, "--spans", "3")
    row = store.recent_answers(store.open_db(), 1)[0]
    assert row["mode"] == "dense" and json.loads(row["dsa"])["mode"] == "dense"
    out = result.stdout
    assert out.lstrip().startswith(row["answer"])  # the streamed answer comes first
    assert "Indexer spans (dense attention read every key" in out and "Selected source spans" not in out
    assert f"answer #{row['id']} (docreader audit {row['id']})" in out
    printed = re.findall(r"^\s+(\d+)\. \[([^\]]+)\] score", out, re.M)
    assert 1 <= len(printed) <= 3 and [int(r) for r, _ in printed] == list(range(1, len(printed) + 1))
    spans = store.get_answer(store.open_db(), row["id"])["spans"]
    for (_, label), s in zip(printed, spans):
        assert label == s["label"] and re.search(r"line \d+", label)
        assert doc.text[s["char_start"] : s["char_end"]].strip()


@pytest.mark.integration
def test_ask_encrypted_pdf_with_password(model_home, tmp_path):
    pages = corpus.page_texts(4)  # ~400 tokens: enough outside the sink and local window to be selected
    pages[1] += "\nGoverning law: this agreement is governed by the laws of Texas."
    pdf = corpus.make_pdf(tmp_path / "locked.pdf", pages, password="hunter2")
    expect_error("ask", pdf, "Which law?", name=str(pdf), reason="encrypted PDF")
    out = json.loads(run("ask", pdf, "Which law governs?", "--password", "hunter2", "--json", "--max-new-tokens", "4").stdout)
    doc = load(str(pdf), password="hunter2")
    check_spans(out["spans"], doc, ("page", "page_label"))
    assert all(s["label"].startswith(f"p. {s['page_label']}") for s in out["spans"])
    assert db_counts(model_home)["answers"] == 1


def make_long(path: Path, tokenizer, limit: int) -> int:
    """A chat log longer than `limit` tokens; returns its token count as docreader reads it."""
    lines = [f"[{10 + i // 60:02d}:{i % 60:02d}] <user{i % 7}> line {i}: the quick brown fox jumps over it"
             for i in range(limit // 12)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    from docreader.prompt import tokenize_document
    n = len(tokenize_document(tokenizer, load(str(path)).text)[0])
    assert n > limit
    return n


@pytest.mark.integration
def test_too_long_document(model_home, tmp_path, tokenizer, monkeypatch):
    """The base model's window is its native 8,192 tokens stretched by DOCREADER_MAX_YARN_FACTOR (the default
    model's delta has a fixed 262,144-token window, which the loaders' budget guards first)."""
    monkeypatch.setattr(models, "MAX_YARN_FACTOR", 1)  # the 8,192-token native window, no YaRN
    path = tmp_path / "long.txt"
    n = make_long(path, tokenizer, 8192)
    base = ("--model", models.BASE_MODEL)
    line = expect_error("ask", *base, path, "Summarise it.", name=str(path), reason="too long for the model")
    assert f"the document is {n:,} tokens" in line and "256 new tokens" in line and "8,192-token window" in line
    line = expect_error("chat", *base, path, name=str(path), reason="too long for the model", input="Summarise it.\n")
    assert f"the document is {n:,} tokens" in line
    assert db_counts(model_home) == NO_ROWS
    monkeypatch.setattr(models, "MAX_YARN_FACTOR", None)  # a bad DOCREADER_MAX_YARN_FACTOR is a user error too
    monkeypatch.setenv("DOCREADER_MAX_YARN_FACTOR", "x")
    expect_error("ask", *base, path, "Summarise it.", reason="DOCREADER_MAX_YARN_FACTOR must be a whole number")
    assert db_counts(model_home) == NO_ROWS


@pytest.mark.integration
def test_chat_sessions(model_home, irc_file):
    result = run("chat", irc_file, "--max-new-tokens", NEW, input="Who is Amaranth?\n\nWhat does Seveas say?\nexit\n")
    m = re.search(r"Chatting about (.+) \(session (\w+)\)", result.stdout)
    assert m and m.group(1) == str(irc_file)
    sid = m.group(2)
    db = store.open_db()
    first = store.recent_answers(db, 10, sid)[::-1]
    assert [a["question"] for a in first] == ["Who is Amaranth?", "What does Seveas say?"]  # blank line skipped
    assert first[1]["prompt_tokens"] > first[0]["prompt_tokens"]  # the second turn sees the first
    assert result.stdout.count("Selected source spans") == 2 and first[0]["answer"] in result.stdout
    assert db["spans"].count > 0 and db["sessions"].count == 1

    result = run("chat", "-c", "--max-new-tokens", NEW, input="And who is monchichi?\n")  # EOF ends the chat
    assert f"Continuing session {sid} on {Path(irc_file).resolve()} (2 earlier turns)." in result.stdout
    hist = store.recent_answers(db, 10, sid)[::-1]
    assert len(hist) == 3 and hist[2]["prompt_tokens"] > hist[1]["prompt_tokens"]

    other = re.search(r"\(session (\w+)\)", run("chat", irc_file, "--max-new-tokens", NEW, input="Hi?\n").stdout).group(1)
    assert other != sid and store.get_session(db)["id"] == other  # now the latest
    result = run("chat", "--session", sid, "--max-new-tokens", NEW, input="Anything else?\n")
    assert f"Continuing session {sid}" in result.stdout and "(3 earlier turns)" in result.stdout
    assert [a["question"] for a in store.recent_answers(db, 10, sid)][0] == "Anything else?"
    assert len(store.recent_answers(db, 10, other)) == 1
    assert db_counts(model_home) == {"documents": 1, "sessions": 2, "answers": 5, "spans": db["spans"].count}


@pytest.mark.integration
def test_many_questions_one_read_then_the_document_cache(model_home, irc_file, tmp_path):
    qfile = tmp_path / "questions.txt"
    qfile.write_text("Who is Amaranth?\n\nWhat does Seveas say?\n", encoding="utf-8")
    out = json.loads(run("ask", irc_file, "-q", "Who buys music from iTunes?", "--questions", qfile, "--json",
                         "--max-new-tokens", NEW).stdout)
    assert [o["question"] for o in out] == ["Who buys music from iTunes?", "Who is Amaranth?", "What does Seveas say?"]
    assert [o["timings"]["prefix_cache"] for o in out] == ["none", "memory", "memory"]  # the document read once
    assert len({o["id"] for o in out}) == 3 and db_counts(model_home)["answers"] == 3

    again = run("ask", irc_file, "Who is Amaranth?", "--max-new-tokens", NEW)  # a new command starts from the disk cache
    assert "from the document cache" in again.stderr and "document from cache" in again.stdout
    plain = json.loads(run("ask", irc_file, "Who is Amaranth?", "--max-new-tokens", NEW, "--json", "--no-cache").stdout)
    assert plain["timings"]["prefix_cache"] == "none" and plain["answer"] == out[1]["answer"]

    [entry] = json.loads(run("cache", "list", "--json").stdout)
    assert Path(entry["document"]).name == irc_file.name and entry["tokens"] > 0 and entry["bytes"] > 0
    assert "1 entries" in run("cache", "list").stdout
    assert run("cache", "path").stdout.strip() == str(model_home / "cache")
    assert "removed 1 entries" in run("cache", "clear").stdout
    assert json.loads(run("cache", "list", "--json").stdout) == []


@pytest.mark.integration
def test_chat_digests_oldest_turns_and_says_so(model_home, irc_file, tokenizer, monkeypatch):
    from docreader.prompt import build
    doc = load(str(irc_file))
    bare = len(build(tokenizer, doc, "Question number one?", window=10**6, max_new_tokens=0).input_ids)
    window = bare + int(NEW) + 45  # room for about one earlier turn beside the document
    monkeypatch.setattr(models.LoadedModel, "context_window", property(lambda self: window))
    qs = ["Question number one?", "Question number two?", "Question number three?", "Question number four?"]
    result = run("chat", irc_file, "--max-new-tokens", NEW, input="\n".join(qs) + "\n")
    notes = re.findall(r"^note: (\d+) earlier turns? no longer fit beside the document; (kept as a digest|left out)",
                       result.stderr, flags=re.M)
    assert notes and "note:" not in result.stdout
    rows = store.recent_answers(store.open_db(), 10)[::-1]
    assert [r["question"] for r in rows] == qs
    assert [r["dropped_turns"] for r in rows][:1] == [0] and rows[-1]["dropped_turns"] >= 2
    dropped = [r["dropped_turns"] for r in rows]  # said when the number changes, not after every answer
    assert [int(n) for n, _ in notes] == [d for i, d in enumerate(dropped) if d and d != ([0] + dropped)[i]]
    assert {r["document_tokens"] for r in rows} == {rows[0]["document_tokens"]}  # the document is always whole
    assert all(r["prompt_tokens"] + int(NEW) <= window for r in rows)


# -- quotes: the answer format on a tiny random model whose generated text is scripted ---------------------------

SCRIPTED = ('Quote: "Either party may end it with ninety (90) days written notice."\n'
            'Quote: "Either party may end it with sixty (60) days written notice."\n'
            "Answer: Ninety days.")


@pytest.fixture
def scripted(monkeypatch, tmp_path_factory):
    """A tiny random Llama (the real generation runs, so spans are real) whose text is replaced by SCRIPTED,
    streamed as if generated."""
    from docreader import engine
    real = engine.generate

    def fake(model, tokenizer, input_ids, max_new_tokens, on_text=None, **kw):
        gen = real(model, tokenizer, input_ids, max_new_tokens, **kw)
        if on_text:
            on_text(SCRIPTED)
        gen.text = SCRIPTED
        return gen

    monkeypatch.setattr(engine, "generate", fake)
    return str(tiny_model_dir(tmp_path_factory.mktemp("models")))


def test_ask_shows_logs_and_audits_quotes(home, tmp_path, scripted):
    path = write_contract(tmp_path / "contract.txt")
    text = path.read_text()
    knobs = [a for k, v in TINY_DSA.items() for a in ("--" + k.replace("_", "-"), v)]
    out = json.loads(run("ask", path, "What notice is needed?", "--json", "--model", scripted, "--max-new-tokens", "4", *knobs).stdout)
    assert out["answer"] == SCRIPTED and out["short_answer"] == "Ninety days." and out["absent"] is False
    good, bad = out["quotes"]
    assert good["verified"] and text[good["char_start"]:good["char_end"]] == good["text"]
    assert (good["line"], good["label"]) == (4, "line 4")
    assert (bad["verified"], bad["char_start"], bad["char_end"]) == (False, None, None)
    assert out["spans"]  # both kinds of provenance, side by side
    audit = json.loads(run("audit", out["id"], "--json").stdout)
    assert [(q["text"], q["verified"], q["char_start"]) for q in audit["quotes"]] == [
        (q["text"], q["verified"], q["char_start"]) for q in out["quotes"]]
    shown = run("ask", path, "What notice is needed?", "--model", scripted, "--max-new-tokens", "4", *knobs).stdout
    assert shown.startswith(SCRIPTED)  # the raw text streams first
    assert f'Quoted from line 4: "{good["text"]}"' in shown
    assert f'Unverified quote (not found in the document): "{bad["text"]}"' in shown
    assert shown.index("Quoted from") < shown.index("Selected source spans")
    audited = run("audit", out["id"]).stdout
    assert "Quotes (what the answer used; only verified ones are citations):" in audited
    assert "Quoted from line 4:" in audited and "Unverified quote" in audited and "not proof of use" in audited
    assert "quotes: 1 verified, 1 unverified · selected spans:" in run("log", "-n", "1").stdout
