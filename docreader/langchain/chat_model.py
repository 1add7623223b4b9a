"""`ChatDocreader`: the local DSA model as a LangChain chat model that answers about one whole document.

Messages map onto docreader's prompt: a SystemMessage replaces prompts/system.txt; the first human turn
is rendered with prompts/ask.txt around the whole document, later human turns with prompts/followup.txt,
AI turns are the assistant's earlier answers. The document comes from (first match wins) the `document`
call kwarg, a `file` content block (`"url": "file:///..."`, or inline `"base64"` + `"mime_type"`: see
file_blocks) or `additional_kwargs["document"]` in the messages (the latest one), or the `document` field.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from ..models import DEFAULT_MODEL
from ._readers import GENERATION_LOCK, document_for, inline_document, reader_for
from .args import check_call, checked_init
from .citations import PROVIDER, annotations
from .file_blocks import InlineFile
from .messages import Emitter, to_docreader

CALL_KWARGS = ("document", "model", "max_tokens", "stream")  # what invoke()/stream() may set per call


class _Cancelled(Exception):
    """Raised from on_text to stop a generation nobody is reading any more."""


class ChatDocreader(BaseChatModel):
    """Answers from the whole document with the local DSA model; the spans its sparse attention selected
    come back as `additional_kwargs["citations"]` (not proof of use), the passages the answer quotes as
    `additional_kwargs["quotes"]` (only `verified` ones are citations) beside `short_answer` and `absent`, the
    answer's log id in `response_metadata`. The same, as langchain-core's standard citation annotations, are
    on the text block of `msg.content_blocks` (see docreader.langchain.citations).

    Unknown constructor or call arguments raise a TypeError (`max_new_tokens` is spelt `max_tokens` here);
    `api_key`, `timeout` and `max_retries` are accepted with a warning (nothing to authenticate or retry).

    Example:
        llm = ChatDocreader(document="contract.pdf", max_tokens=128)
        msg = llm.invoke("Which state's law governs this agreement?")
        msg.content, msg.content_blocks[0]["annotations"][0]["cited_text"], msg.usage_metadata
    """

    model_config = ConfigDict(populate_by_name=True)

    model: str | None = Field(default=None, alias="model_name")
    """Local Hugging Face model dir (Llama/Qwen2/Qwen3/Mistral) or hf:ORG/NAME; None: the default model.
    Also accepted as `model_name` (as other LangChain chat models spell it)."""
    document: str | None = None
    """Path of the document to read when the call and messages name none."""
    root_dir: str | None = None
    """Documents must lie inside this directory (symlinks resolved, relative paths taken from it); None: the
    current working directory at call time. A path outside it is refused."""
    format: str | None = None
    password: SecretStr | None = None
    max_tokens: int = Field(default=256, ge=1)
    """The most tokens an answer may have (docreader's --max-new-tokens)."""
    temperature: float | None = None
    """Decoding is greedy: only None or 0 are accepted."""
    stop: list[str] | None = None
    dense: bool = False
    top_k: int | None = None
    n_blocks: int | None = None
    local_window: int | None = None
    sink_tokens: int | None = None
    max_spans: int = 20
    log: bool = True
    """Write each answer to the SQLite log (as the CLI does)."""
    db_path: str | None = None
    """The log's path; None: $DOCREADER_HOME/docreader.db at call time."""
    streaming: bool = False

    @model_validator(mode="before")
    @classmethod
    def _known_args(cls, values: Any) -> Any:
        if isinstance(values, dict) and "model" in values and "model_name" in values \
                and values["model"] != values["model_name"]:
            raise TypeError("ChatDocreader() got both model and model_name (one is an alias of the other)")
        return checked_init(cls, values)

    @field_validator("temperature")
    @classmethod
    def _greedy(cls, v: float | None) -> float | None:
        if v not in (None, 0):
            raise ValueError("ChatDocreader decodes greedily; temperature must be 0 or None")
        return v

    @property
    def _llm_type(self) -> str:
        return "docreader"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model or DEFAULT_MODEL, "document": self.document, "max_tokens": self.max_tokens,
                "dense": self.dense, **self._overrides()}

    def _overrides(self) -> dict:
        return {"top_k": self.top_k, "n_blocks": self.n_blocks, "local_window": self.local_window,
                "sink_tokens": self.sink_tokens}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="docreader", ls_model_type="chat",
                                 ls_model_name=kwargs.get("model") or self.model or DEFAULT_MODEL,
                                 ls_max_tokens=kwargs.get("max_tokens", self.max_tokens))
        if self.temperature is not None:
            params["ls_temperature"] = self.temperature
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # -- one call -------------------------------------------------------------------------------------

    def _ask(self, messages: list[BaseMessage], kwargs: dict, on_text) -> Any:
        check_call("ChatDocreader.invoke()", kwargs, CALL_KWARGS)
        system, history, question, in_messages = to_docreader(messages)
        ref = kwargs.get("document") or in_messages or self.document
        if not ref:
            raise ValueError("ChatDocreader needs a document: set document=PATH, pass document=PATH to invoke(), "
                             "or add a {'type': 'file', 'url': 'file:///PATH'} (or 'base64' + 'mime_type') block "
                             "to a message")
        reader = reader_for(kwargs.get("model") or self.model, self._overrides(), self.db_path)
        pwd = self.password.get_secret_value() if self.password else None
        doc = (inline_document(ref, password=pwd) if isinstance(ref, InlineFile)
               else document_for(ref, format=self.format, password=pwd, root_dir=self.root_dir))
        with GENERATION_LOCK:
            reader.system = system
            try:
                return reader.ask(doc, question, history=history, max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
                                  dense=self.dense, on_text=on_text, log=self.log, max_spans=self.max_spans)
            finally:
                reader.system = None

    def _final_chunk(self, ans, text: str, stopped: bool) -> AIMessageChunk:
        """The last chunk: no text (it has been streamed), all the metadata. `text`: the whole response."""
        d = ans.document
        citations = [{"document": d.path, "sha256": d.sha256, "rank": s.rank, "score": s.score,
                      "char_start": s.char_start, "char_end": s.char_end, "label": s.location.get("label", ""),
                      "location": s.location, "text": s.text} for s in ans.spans]
        cached = ans.timings.get("cached_prefix_tokens", 0)
        usage = {"input_tokens": ans.prompt_tokens, "output_tokens": ans.new_tokens,
                 "total_tokens": ans.prompt_tokens + ans.new_tokens, "input_token_details": {"cache_read": cached}}
        meta = {"model_name": ans.model, "model_provider": PROVIDER,
                "finish_reason": "stop" if stopped or ans.stop_reason == "eos" else "length",
                "mode": ans.mode, "dsa": ans.dsa, "timings": ans.timings, "answer_id": ans.id,
                "document": {"path": d.path, "format": d.format, "sha256": d.sha256, "chars": len(d.text),
                             "tokens": ans.document_tokens},
                "rope_factor": ans.rope_factor, "native_window": ans.native_window, "dropped_turns": ans.dropped_turns,
                "history_turns": ans.history_turns, "history_digest": ans.history_digest}
        quotes = [{"document": d.path, "sha256": d.sha256} | q.to_json() for q in ans.quotes]
        return AIMessageChunk(content="", additional_kwargs={"citations": citations, "quotes": quotes,
                                                             "short_answer": ans.answer_text, "absent": ans.absent,
                                                             "annotations": annotations(text, ans)},
                              usage_metadata=usage,
                              response_metadata=meta, chunk_position="last")

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        emitter = Emitter(stop or self.stop)
        ans = self._ask(messages, kwargs, emitter.feed)
        emitter.finish()
        final = self._final_chunk(ans, emitter.text(), emitter.stopped)
        msg = AIMessage(content=emitter.text(), additional_kwargs=final.additional_kwargs,
                        usage_metadata=final.usage_metadata, response_metadata=final.response_metadata)
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        """Real tokens as they are decoded: generation runs in a worker thread feeding a queue."""
        q: queue.Queue = queue.Queue()
        cancel = threading.Event()

        def on_text(piece: str) -> None:
            if cancel.is_set():
                raise _Cancelled
            q.put(("text", piece))

        def work() -> None:
            try:
                q.put(("done", self._ask(messages, kwargs, on_text)))
            except BaseException as e:  # handed to the consumer
                q.put(("error", e))

        worker = threading.Thread(target=work, name="docreader-stream", daemon=True)
        worker.start()
        emitter = Emitter(stop or self.stop)
        try:
            while True:
                kind, value = q.get()
                if kind == "error":
                    raise value
                text = emitter.feed(value) if kind == "text" else emitter.finish()
                if text:  # (BaseChatModel.stream reports each chunk to on_llm_new_token)
                    yield ChatGenerationChunk(message=AIMessageChunk(content=text))
                if kind == "done":
                    yield ChatGenerationChunk(message=self._final_chunk(value, emitter.text(), emitter.stopped))
                    return
        finally:
            cancel.set()  # a consumer that stops early ends the generation at the next token
            worker.join()
