"""The README's agent loop, run as written: langchain-core's GenericFakeChatModel issues the tool calls,
docreader's tools answer from the document (a tiny random Llama; `integration`: the real default model)."""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage

sys.path.insert(0, str(Path(__file__).parent))
from test_langchain_support import LONG_CONTRACT, TINY_DSA, tiny_model_dir, write_contract  # noqa: E402

import docreader.langchain as dl  # noqa: E402
from docreader import store  # noqa: E402
from docreader.quotes import parse  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_loop() -> str:
    text = README.read_text(encoding="utf-8")
    return re.search(r"<!-- agent-loop[^>]*-->\n```python\n(.*?)```", text, re.S).group(1)


class FakeToolCaller(GenericFakeChatModel):
    """GenericFakeChatModel plus bind_tools, so it can stand in for a tool-calling model."""

    bound: list = []

    def bind_tools(self, tools, **kwargs):
        self.bound = [t.name for t in tools]
        return self


def script(path: str) -> FakeToolCaller:
    q = "Which state's law governs this agreement?"
    return FakeToolCaller(messages=iter([
        AIMessage("", tool_calls=[{"name": "ask_document", "args": {"path": path, "question": q}, "id": "t1"}]),
        AIMessage("", tool_calls=[{"name": "audit_answer", "args": {"answer_id": 1}, "id": "t2"},
                                  {"name": "list_documents", "args": {}, "id": "t3"}]),
        AIMessage("Done: see answer #1."),
    ]))


def run_loop(tool_model, **tool_kw) -> dict:
    ns = {"tool_model": tool_model}
    mp = pytest.MonkeyPatch()
    mp.setattr(dl, "docreader_tools", functools.partial(dl.docreader_tools, **tool_kw))
    try:
        exec(compile(readme_loop(), "README.md:agent-loop", "exec"), ns)
    finally:
        mp.undo()
    return ns


def check(ns: dict, doc: Path) -> list[ToolMessage]:
    assert ns["agent"].bound == ["ask_document", "audit_answer", "list_documents"]
    tool_msgs = [m for m in ns["messages"] if isinstance(m, ToolMessage)]
    assert [m.tool_call_id for m in tool_msgs] == ["t1", "t2", "t3"]
    assert all(m.status == "success" for m in tool_msgs)
    asked, audited, listed = tool_msgs
    text = doc.read_text()
    assert asked.artifact and all(s["text"] == text[s["char_start"]:s["char_end"]] for s in asked.artifact)
    assert audited.artifact["question"] == "Which state's law governs this agreement?"
    assert str(doc.resolve()) in listed.content
    assert ns["reply"].content == "Done: see answer #1."
    row = store.get_answer(store.open_db(), 1)  # logged like `docreader ask`
    assert asked.content.startswith(f"Answer: {parse(row['answer']).answer}\n")  # the short answer first
    return tool_msgs


def test_readme_agent_loop_with_fake_tool_calling_model(home, tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tools' default root directory
    doc = write_contract(tmp_path / "contract.txt")
    tiny = str(tiny_model_dir(tmp_path_factory.mktemp("models")))
    ns = run_loop(script(str(doc)), model=tiny, max_new_tokens=6, **TINY_DSA)
    check(ns, doc)


@pytest.mark.integration
def test_real_model_agent_loop_and_chat_model(model_home, tmp_path, capsys, monkeypatch):
    """The default SmolLM2-135M with its trained indexer on a short contract (well under a minute)."""
    monkeypatch.chdir(tmp_path)  # the tools' and the chat model's default root directory
    doc = write_contract(tmp_path / "contract.txt", LONG_CONTRACT)
    ns = run_loop(script(str(doc)), max_new_tokens=24)
    asked = check(ns, doc)[0]
    print("\nask_document ->", asked.content)
    for s in asked.artifact[:3]:
        print(f"  {s['rank']}. [{s['label']}] {s['score']:.3f} {s['text']!r}")
    # no assertion on what the 135M model answers (that is bench/'s job); the pipeline must produce one,
    # with spans that quote lines of the contract
    assert asked.content.split("\n")[0].removeprefix("Answer: ").strip()
    assert all(re.fullmatch(r"line \d+( – line \d+)?", s["label"]) for s in asked.artifact)
    assert re.search(r'\n1\. lines? \d+(–\d+)?: "', asked.content)  # the top passage, quoted with its lines

    llm = dl.ChatDocreader(document=str(doc), max_tokens=16)
    streamed = "".join(c.content for c in llm.stream("What notice does a party need to give to end it?"))
    msg = llm.invoke("What notice does a party need to give to end it?")
    print("ChatDocreader ->", msg.content, msg.usage_metadata, msg.response_metadata["timings"])
    for c in msg.additional_kwargs["citations"][:3]:
        print(f"  {c['rank']}. [{c['label']}] {c['score']:.3f} {c['text']!r}")
    assert streamed == msg.content and msg.response_metadata["model_name"] == "smollm2-135m-instruct"
    assert msg.usage_metadata["input_token_details"]["cache_read"] > 0  # the contract's prefix was reused
    with capsys.disabled():
        print(capsys.readouterr().out)
