"""ask_document / audit_answer / list_documents on a tiny random Llama, against the SQLite log in
$DOCREADER_HOME (the `home` fixture from conftest.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from langchain_core.messages import ToolMessage

sys.path.insert(0, str(Path(__file__).parent))
from test_langchain_support import TINY_DSA, tiny_model_dir, write_contract  # noqa: E402

from docreader import store  # noqa: E402
from docreader.langchain import ask_document, audit_answer, docreader_tools, list_documents  # noqa: E402


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
    assert row["question"] == "What law governs?" and msg.content.startswith(row["answer"])
    assert [s["rank"] for s in row["spans"]] == [s["rank"] for s in spans]

    audit = call(tools["audit_answer"], {"answer_id": 1}, "c2")
    assert "Q: What law governs?" in audit.content and audit.artifact["id"] == 1
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
