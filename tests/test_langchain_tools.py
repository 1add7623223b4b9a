"""ask_document / audit_answer / list_documents on a tiny random Llama, against the SQLite log in
$DOCREADER_HOME (the `home` fixture from conftest.py)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from langchain_core.messages import ToolMessage

sys.path.insert(0, str(Path(__file__).parent))
from test_langchain_support import TINY_DSA, tiny_model_dir, write_contract  # noqa: E402

from docreader import store  # noqa: E402
from docreader.quotes import parse  # noqa: E402
from docreader.langchain import ask_document, audit_answer, docreader_tools, list_documents  # noqa: E402


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tools' default root directory


@pytest.fixture(scope="module")
def tools(tmp_path_factory) -> dict:
    tiny = str(tiny_model_dir(tmp_path_factory.mktemp("models")))
    return {t.name: t for t in docreader_tools(model=tiny, max_new_tokens=6, **TINY_DSA)}


def call(tool, args: dict, id: str = "c1") -> ToolMessage:
    return tool.invoke({"type": "tool_call", "name": tool.name, "args": args, "id": id})


def test_schemas():
    assert set(ask_document.args) == {"path", "question"} and ask_document.response_format == "content_and_artifact"
    assert set(audit_answer.args) == {"answer_id"} and audit_answer.args["answer_id"]["type"] == "integer"
    assert list_documents.args == {}


def test_ask_audit_list_share_the_log(tools, home, tmp_path):
    doc = write_contract(tmp_path / "contract.txt")
    msg = call(tools["ask_document"], {"path": str(doc), "question": "What law governs?"})
    assert isinstance(msg, ToolMessage) and msg.status == "success" and msg.tool_call_id == "c1"
    assert "[answer #1 on " in msg.content
    spans, text = msg.artifact, doc.read_text()
    assert spans and all(s["text"] == text[s["char_start"]:s["char_end"]] and s["answer_id"] == 1 for s in spans)
    db = store.open_db()  # $DOCREADER_HOME/docreader.db, the CLI's log
    row = store.get_answer(db, 1)
    assert row["question"] == "What law governs?" and msg.content.startswith(f"Answer: {parse(row['answer']).answer}\n")
    assert [s["rank"] for s in row["spans"]] == [s["rank"] for s in spans]

    audit = call(tools["audit_answer"], {"answer_id": 1}, "c2")
    assert "Q: What law governs?" in audit.content and audit.artifact["id"] == 1
    assert audit.artifact["quotes"] == row["quotes"]
    assert [s["text"] for s in audit.artifact["spans"]] == [s["text"] for s in spans]
    assert json.dumps(audit.artifact)  # plain JSON data

    listed = call(tools["list_documents"], {}, "c3")
    assert str(doc.resolve()) in listed.content and "1 answers" in listed.content
    assert listed.artifact[0]["answers"] == 1

    from typer.testing import CliRunner

    from docreader.cli import app
    out = CliRunner().invoke(app, ["log", "--json"])  # the CLI reads what the tool wrote
    assert out.exit_code == 0 and [r["question"] for r in json.loads(out.stdout)] == ["What law governs?"]


def test_errors_go_back_to_the_agent(tools, home, tmp_path):
    missing = call(tools["ask_document"], {"path": str(tmp_path / "nope.pdf"), "question": "q"})
    assert missing.status == "error" and "nope.pdf" in missing.content
    unknown = call(tools["audit_answer"], {"answer_id": 99})
    assert unknown.status == "error" and "no answer with id 99" in unknown.content
    assert call(tools["list_documents"], {}).content == "no documents yet"


# -- the root directory (issue 15: an agent asked about /etc/os-release and got it quoted back) ------------

def test_paths_outside_the_root_are_refused(tools, home, tmp_path):
    inside = write_contract(tmp_path / "contract.txt")
    outside = write_contract(tmp_path.parent / f"{tmp_path.name}-secret.txt")
    (tmp_path / "link.txt").symlink_to(outside)
    (tmp_path / "dirlink").symlink_to(tmp_path.parent, target_is_directory=True)
    for path in ("/etc/os-release", str(outside), "link.txt", str(tmp_path / "link.txt"), f"../{outside.name}",
                 f"dirlink/{outside.name}", "~/.bashrc"):
        msg = call(tools["ask_document"], {"path": path, "question": "What does it say?"})
        assert msg.status == "error" and msg.content == (f"error: {path}: outside the allowed directory "
                                                         f"{tmp_path} (set root_dir to allow it)"), msg.content
    assert store.open_db()["answers"].count == 0
    assert call(tools["ask_document"], {"path": "contract.txt", "question": "What law?"}).status == "success"
    assert str(inside) in call(tools["list_documents"], {}).content


def test_audit_and_list_keep_to_the_root(tools, home, tmp_path, monkeypatch):
    """Answers logged about files elsewhere (by the CLI, or with another root) are not quoted to the agent."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    doc = write_contract(elsewhere / "private.txt")
    wide = {t.name: t for t in docreader_tools(model=tools["ask_document"].model, max_new_tokens=4,
                                               root_dir=str(elsewhere), **TINY_DSA)}
    assert call(wide["ask_document"], {"path": str(doc), "question": "What law?"}).status == "success"
    narrow = tmp_path / "narrow"
    narrow.mkdir()
    monkeypatch.chdir(narrow)
    audit = call(tools["audit_answer"], {"answer_id": 1})
    assert audit.status == "error" and "outside the allowed directory" in audit.content
    assert "private" not in call(tools["list_documents"], {}).content
    assert call(wide["audit_answer"], {"answer_id": 1}).status == "success"


def test_chat_model_keeps_to_its_root(tools, home, tmp_path):
    from langchain_core.messages import HumanMessage

    from docreader.errors import DocreaderError
    from docreader.langchain import ChatDocreader
    llm = ChatDocreader(model=tools["ask_document"].model, max_tokens=4, log=False, **TINY_DSA)
    block = {"type": "file", "url": "file:///etc/os-release"}
    for call_it in (lambda: llm.invoke("What?", document="/etc/os-release"),
                    lambda: llm.invoke([HumanMessage(content=[block, {"type": "text", "text": "What?"}])])):
        with pytest.raises(DocreaderError, match="/etc/os-release: outside the allowed directory"):
            call_it()
    write_contract(tmp_path / "contract.txt")
    assert llm.invoke("What law?", document="contract.txt").content is not None


# -- what ask_document tells the agent (issue 19: "p. 2; p. 2; p. 2" said nothing quotable) ---------------

def test_ask_document_quotes_its_top_passages_with_page_and_line(tools, home, tmp_path):
    from corpus import make_pdf
    pages = ["SUPPLY AGREEMENT\n1. Term. Three years from 1 March 2024.\n2. Notice. Ninety days written notice.",
             "3. Governing law. The laws of the State of Delaware.\n4. Payment. Invoices are due in thirty days."]
    doc = make_pdf(tmp_path / "contract.pdf", pages)
    msg = call(tools["ask_document"], {"path": str(doc), "question": "What law governs?"})
    lines = msg.content.splitlines()
    assert lines[0].startswith("Answer: ") and "Passages the model read most" in msg.content
    listed = [ln for ln in lines if re.match(r"\d+\. ", ln)]
    assert len(listed) == min(3, len(msg.artifact)) >= 1
    for ln, span in zip(listed, msg.artifact):
        m = re.fullmatch(r'(\d+)\. (p\. \d+), lines? (\d+)(?:–(\d+))?: "(.*)"', ln)
        assert m, ln
        assert int(m[1]) == span["rank"] and m[2] == span["label"]
        assert m[5] == " ".join(span["text"].split())  # the passage itself, not only where it is
    assert msg.content.endswith(f"audit_answer(1) lists all {len(msg.artifact)} passages]")


def test_summary_places_verified_quotes_by_page_and_line(tmp_path):
    from types import SimpleNamespace

    from corpus import make_pdf

    from docreader.langchain._readers import document_for
    from docreader.langchain.passages import answer_summary
    from docreader.quotes import verify
    doc = document_for(make_pdf(tmp_path / "c.pdf", ["Cover page\nNothing here.",
                                                    "Recitals.\nThe laws of the State of Delaware govern."]),
                       root_dir=tmp_path)
    quotes = [verify("The laws of the State of Delaware govern.", doc), verify("Texas law applies", doc)]
    ans = SimpleNamespace(document=doc, quotes=quotes, spans=[], answer_text="Delaware.", text="", id=None)
    assert answer_summary(ans).splitlines() == [
        "Answer: Delaware.",
        'Quoted from p. 2, line 2: "The laws of the State of Delaware govern."',
        'Unverified quote (not found in the document): "Texas law applies"',
        f"[answer (not logged) on {doc.path}]"]
