"""ChatDocreader under langchain-tests' standard `ChatModelIntegrationTests`, on the real default model
(marked `integration`), plus the real model's quotes as standard citation annotations.

Kept small: a four-line document, at most 3 answer tokens per call (the standard tests check shapes, not
wording), one Reader for the whole class so the document's KV cache is reused between tests.

Standard tests that skip themselves here, through the suite's own switches (each the documented way to
declare a capability absent):
- tool calling, tool choice, structured output, JSON mode, the agent loop (`has_tool_calling`,
  `has_structured_output`, `supports_json_mode` False): the local 135M document-QA model is not trained
  to call tools; agents reach docreader through docreader.langchain.tools instead;
- image, audio, video inputs and image/PDF tool messages (`supports_*` False): a document reader reads
  documents, not media, and has no tool messages of its own;
- Anthropic-format inputs (`supports_anthropic_inputs` False): tool-use blocks again;
- `test_stream_time` (`enable_vcr_tests` False): it benchmarks recorded HTTP traffic; a local model makes none.
PDF inputs ARE supported: `test_pdf_inputs` runs, the suite's download of its dummy PDF answered by a local
one (the `_offline` fixture: no network at test time).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from unittest import mock

import httpx
import pytest
from langchain_core.messages import AIMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests

sys.path.insert(0, str(Path(__file__).parent))
from corpus import pdf_bytes  # noqa: E402
from test_langchain_support import CONTRACT  # noqa: E402

from docreader.langchain import ChatDocreader  # noqa: E402
from docreader.models import BASE_MODEL  # noqa: E402

pytestmark = pytest.mark.integration

_DIR = Path(tempfile.mkdtemp(prefix="docreader-lc-integration-"))
DOC = _DIR / "contract.txt"
DOC.write_text(CONTRACT, encoding="utf-8")


class TestChatDocreaderIntegration(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _home(self, model_home) -> None:
        """Each test logs into its own empty DOCREADER_HOME (with the real default model linked in)."""

    @pytest.fixture(autouse=True)
    def _offline(self):
        """test_pdf_inputs downloads a dummy PDF with httpx.get: answer it with a local one (no network)."""
        def get(url, *args, **kwargs):
            assert url.endswith("/dummy.pdf"), f"no network in tests: {url}"
            return httpx.Response(200, content=pdf_bytes(["Dummy PDF file"]))
        with mock.patch.object(httpx, "get", get):
            yield

    @property
    def chat_model_class(self) -> type[ChatDocreader]:
        return ChatDocreader

    @property
    def chat_model_params(self) -> dict:
        return {"document": str(DOC), "root_dir": str(_DIR), "max_tokens": 3}

    @property
    def model_override_value(self) -> str:
        return BASE_MODEL  # the default model without its long-context delta: a second real local model

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": ["cache_read_input"], "stream": ["cache_read_input"]}

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        """A second question about the same document reads the document's KV cache."""
        llm = ChatDocreader(**self.chat_model_params)
        llm.invoke("When are invoices due?")
        if not stream:
            return llm.invoke("What is the notice period?")
        full = None
        for chunk in llm.stream("What is the notice period?"):
            full = chunk if full is None else full + chunk
        return full

    @property
    def supports_pdf_inputs(self) -> bool:
        return True



def test_real_quotes_are_standard_citations(model_home):
    """The real model quotes the governing-law clause; the quote comes back as a `citation` annotation whose
    start/end index its place in the response text and whose cited_text is the document's own passage."""
    llm = ChatDocreader(document=str(DOC), root_dir=str(_DIR), max_tokens=20)  # the quote, no more
    msg = llm.invoke("Which state's law governs this agreement?")
    (block,) = msg.content_blocks
    quotes = [a for a in block["annotations"] if a["type"] == "citation" and a["extras"]["kind"] == "quote"]
    assert quotes, msg.content
    q = quotes[0]
    assert "Delaware" in q["cited_text"] and q["url"] == DOC.as_uri() and q["title"] == "contract.txt"
    assert msg.content[q["start_index"]:q["end_index"]] == q["cited_text"]
    assert CONTRACT[q["extras"]["char_start"]:q["extras"]["char_end"]] == q["cited_text"]
    spans = [a for a in block["annotations"] if a["extras"]["kind"] == "attention_span"]
    assert spans and all(CONTRACT[a["extras"]["char_start"]:a["extras"]["char_end"]] == a["cited_text"] for a in spans)


def test_max_tokens_is_honoured_and_max_new_tokens_refused(model_home):
    """The issue's report: `max_new_tokens=4` was ignored and 256 tokens came back."""
    with pytest.raises(TypeError, match="did you mean 'max_tokens'"):
        ChatDocreader(document=str(DOC), root_dir=str(_DIR), max_new_tokens=4)
    msg = ChatDocreader(document=str(DOC), root_dir=str(_DIR), max_tokens=4).invoke("Summarise the agreement.")
    assert msg.usage_metadata["output_tokens"] <= 4 and msg.response_metadata["finish_reason"] == "length"
