"""ChatDocreader by LangChain's conventions (issue 19): citations as standard content-block annotations,
unknown arguments refused, `model_name` as an alias, standard v1 (and older) file blocks as the document.
Tiny random Llama (test_langchain_support); `home`, an empty DOCREADER_HOME, comes from conftest.py."""

from __future__ import annotations

import base64
import sys
import typing
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.messages.content import Citation, NonStandardAnnotation

sys.path.insert(0, str(Path(__file__).parent))
from corpus import pdf_bytes  # noqa: E402
from test_langchain_support import TINY_DSA, tiny_model_dir, write_contract  # noqa: E402

from docreader.errors import DocreaderError  # noqa: E402
from docreader.langchain import AskDocumentTool, ChatDocreader, docreader_tools  # noqa: E402
from docreader.langchain._readers import document_for  # noqa: E402
from docreader.langchain.citations import annotations  # noqa: E402
from docreader.quotes import verify  # noqa: E402

CITATION_KEYS = set(typing.get_type_hints(Citation)) | {"type"}
NON_STANDARD_KEYS = set(typing.get_type_hints(NonStandardAnnotation))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(tiny_model_dir(tmp_path_factory.mktemp("models")))


@pytest.fixture
def contract(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return write_contract(tmp_path / "contract.txt")


def llm(tiny: str, **kw) -> ChatDocreader:
    return ChatDocreader(**{"model": tiny, "max_tokens": 6, "log": False, **TINY_DSA, **kw})


# -- citations ---------------------------------------------------------------------------------------


def test_spans_are_citation_annotations_on_the_text_block(tiny, home, contract):
    """content_blocks: one text block whose annotations are Citation dicts (only the standard's keys), the
    same from invoke, from an aggregated stream, and as `content` itself under output_version="v1"."""
    model = llm(tiny, document=str(contract))
    msg = model.invoke("Which law governs?")
    (block,) = msg.content_blocks
    assert block["type"] == "text" and block["text"] == msg.content
    notes = block["annotations"]
    spans = msg.additional_kwargs["citations"]
    assert len(notes) == len(spans) >= 1
    text = contract.read_text()
    for note, span in zip(notes, spans):
        assert set(note) <= CITATION_KEYS and note["type"] == "citation"
        assert note["url"] == contract.as_uri() and note["title"] == "contract.txt"
        assert note["cited_text"] == span["text"] == text[note["extras"]["char_start"]:note["extras"]["char_end"]]
        assert note["extras"]["kind"] == "attention_span" and note["extras"]["rank"] == span["rank"]
        assert "start_index" not in note  # a span belongs to the whole answer, not to part of the response
    full = None
    for chunk in model.stream("Which law governs?"):
        full = chunk if full is None else full + chunk
    assert full.content_blocks == msg.content_blocks
    v1 = llm(tiny, document=str(contract), output_version="v1").invoke("Which law governs?")
    assert [{k: v for k, v in b.items() if k != "index"} for b in v1.content] == msg.content_blocks


def test_quotes_are_citations_indexed_in_the_response(tmp_path):
    """A verified quote: cited_text is the document's passage, start/end_index its place in the response
    text (the standard's meaning), extras the document's char range and line; an unverified one is a
    non-standard annotation, never a citation."""
    doc = document_for(write_contract(tmp_path / "c.txt"), root_dir=tmp_path)
    good, bad = verify("governed by the laws of the State of Delaware", doc), verify("the laws of Texas apply", doc)
    assert good.verified and not bad.verified
    text = 'Quote: "governed by the laws of the State of Delaware"\nQuote: "the laws of Texas apply"\nAnswer: Delaware.'
    ans = SimpleNamespace(document=doc, quotes=[good, bad], spans=[])
    cite, other = annotations(text, ans)
    assert set(cite) <= CITATION_KEYS and cite["type"] == "citation"
    assert text[cite["start_index"]:cite["end_index"]] == good.text
    assert cite["cited_text"] == doc.text[good.char_start:good.char_end]
    assert (cite["extras"]["kind"], cite["extras"]["line"], cite["extras"]["char_start"]) == ("quote", 5, good.char_start)
    assert set(other) <= NON_STANDARD_KEYS and other["type"] == "non_standard_annotation"
    assert other["value"]["kind"] == "unverified_quote" and other["value"]["text"] == bad.text
    cut = annotations(text[:10], ans)[0]  # a quote cut from the text (a stop sequence): no response range
    assert "start_index" not in cut and cut["cited_text"] == cite["cited_text"]


# -- arguments ---------------------------------------------------------------------------------------


def test_unknown_arguments_are_refused_and_max_tokens_is_the_limit(tiny, home, contract):
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'max_new_tokens' \(did you mean 'max_tokens'\?\)"):
        ChatDocreader(max_new_tokens=4)
    with pytest.raises(TypeError, match="'colour'"):
        ChatDocreader(colour="red")
    with pytest.warns(UserWarning, match="ignores timeout, max_retries: it runs a local model") as w:
        ChatDocreader(timeout=30, max_retries=2)
    assert w[0].filename == __file__  # pointed at the caller, not at pydantic
    model = llm(tiny, document=str(contract), max_tokens=2)
    with pytest.raises(TypeError, match="invoke\\(\\) got unexpected keyword argument 'max_new_tokens'"):
        model.invoke("What is the term?", max_new_tokens=4)
    assert model.invoke("What is the term?").usage_metadata["output_tokens"] <= 2
    assert model.invoke("What is the term?", max_tokens=1).usage_metadata["output_tokens"] == 1
    with pytest.raises(TypeError, match="'max_tokens'"):
        AskDocumentTool(max_tokens=4)
    with pytest.raises(TypeError, match="docreader_tools\\(\\) got unexpected keyword argument 'max_tokens'"):
        docreader_tools(max_tokens=4)
    with pytest.raises(TypeError, match="'topk'.*did you mean 'top_k'"):
        AskDocumentTool(overrides={"topk": 4})


def test_model_name_is_an_alias_of_model(tiny, home, contract):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = ChatDocreader(model_name=tiny, document=str(contract), max_tokens=2, log=False, **TINY_DSA)
    assert model.model == tiny and model._get_ls_params()["ls_model_name"] == tiny
    assert model.invoke("What is the term?").response_metadata["model_name"] == "tiny-llama"  # that model ran
    assert ChatDocreader(model="x").model == "x"
    with pytest.raises(TypeError, match="both model and model_name"):
        ChatDocreader(model="x", model_name="y")


# -- file blocks -------------------------------------------------------------------------------------


def _ask(model: ChatDocreader, block: dict):
    return model.invoke([HumanMessage(content=[{"type": "text", "text": "What does it say?"}, block])])


def test_v1_and_older_file_blocks_are_the_document(tiny, home, tmp_path, monkeypatch):
    """Inline documents in every standard form: read whole, named `<inline NAME>`, no file needed on disk
    (so outside any root directory is fine: nothing is read from a path)."""
    monkeypatch.chdir(tmp_path)
    model = llm(tiny, max_tokens=2)
    text = b"MEMO\n\nThe office closes at five on Fridays.\n"
    pdf = pdf_bytes(["Page one: the office closes at five.", "Page two: it opens at nine."])
    b64, pdf64 = base64.b64encode(text).decode(), base64.b64encode(pdf).decode()
    md64 = base64.b64encode(b"# Memo\n\nOpen at nine.").decode()
    forms = [
        ({"type": "file", "base64": b64, "mime_type": "text/plain"}, "txt", None),
        ({"type": "file", "base64": pdf64, "mime_type": "application/pdf", "extras": {"filename": "memo.pdf"}},
         "pdf", "<inline memo.pdf>"),
        ({"type": "file", "source_type": "base64", "data": pdf64, "mime_type": "application/pdf"}, "pdf", None),
        ({"type": "file", "url": f"data:text/markdown;base64,{md64}"},
         "md", None),
        ({"type": "file", "file": {"filename": "f.pdf", "file_data": f"data:application/pdf;base64,{pdf64}"}},
         "pdf", "<inline f.pdf>"),  # OpenAI's form, which langchain-core normalises to the v1 one
    ]
    for block, fmt, name in forms:
        meta = _ask(model, block).response_metadata["document"]
        assert meta["format"] == fmt, block
        assert meta["path"] == (name or meta["path"]) and meta["path"].startswith("<inline ")
    assert _ask(model, forms[0][0]).response_metadata["document"]["sha256"] == document_for(
        write_contract(tmp_path / "m.txt", text.decode())).sha256  # the same text as the file would give
    pages = _ask(model, forms[1][0]).content_blocks[0]["annotations"]
    assert all("url" not in a and a["title"] == "<inline memo.pdf>" for a in pages)  # no file URL to cite


def test_bad_file_blocks_say_why(tiny, home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = llm(tiny, max_tokens=2)
    with pytest.raises(ValueError, match="not valid base64"):
        _ask(model, {"type": "file", "base64": "%%%not base64", "mime_type": "application/pdf"})
    with pytest.raises(DocreaderError, match=r"^<inline broken\.pdf>: ") as e:
        _ask(model, {"type": "file", "base64": base64.b64encode(b"%PDF-1.4 garbage").decode(),
                     "mime_type": "application/pdf", "extras": {"filename": "broken.pdf"}})
    assert "docreader-inline-" not in str(e.value)  # the temporary file is never named
    with pytest.raises(ValueError, match="not a provider's file_id"):
        _ask(model, {"type": "file", "file_id": "file-abc"})
    monkeypatch.setenv("DOCREADER_MAX_BYTES", "100")
    with pytest.raises(DocreaderError, match="over the .* limit"):
        _ask(model, {"type": "file", "base64": base64.b64encode(b"x" * 400).decode(), "mime_type": "text/plain"})
