"""`ChatDocreader`: the local DSA model as a LangChain chat model that answers about one whole document.

Messages map onto docreader's prompt: a SystemMessage replaces prompts/system.txt; the first human turn
is rendered with prompts/ask.txt around the whole document, later human turns with prompts/followup.txt,
AI turns are the assistant's earlier answers. The document comes from (first match wins) the `document`
call kwarg, a `{"type": "file", "url": "file:///..."}` content block or `additional_kwargs["document"]`
in the messages (the latest one), or the `document` field.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlparse

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field, SecretStr, field_validator

from ..models import DEFAULT_MODEL
from ._readers import GENERATION_LOCK, document_for, reader_for


class _Cancelled(Exception):
    """Raised from on_text to stop a generation nobody is reading any more."""


class _Emitter:
    """Turns raw streamed pieces into what the final answer will be: stripped, cut at a stop sequence.

    Whitespace at the end and the last len(longest stop)-1 characters are held back until it is clear
    they belong to the answer, so the concatenated chunks equal the invoke() content exactly."""

    def __init__(self, stop: list[str] | None):
        self.stop = [s for s in (stop or []) if s]
        self.raw, self.sent, self.stopped = "", 0, False

    def _text(self) -> tuple[str, bool]:
        text = self.raw.lstrip()
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return (text[: min(cuts)], True) if cuts else (text, False)

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.raw += piece
        text, self.stopped = self._text()
        if self.stopped:
            return ""
        keep = len(text.rstrip()) - max((len(s) - 1 for s in self.stop), default=0)
        out = text[self.sent : max(keep, self.sent)]
        self.sent += len(out)
        return out

    def finish(self) -> str:
        text = self._text()[0].rstrip()
        out, self.sent = text[self.sent :], len(text)
        return out


def _text_of(message: BaseMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    return "".join(b if isinstance(b, str) else b.get("text", "") for b in message.content
                   if isinstance(b, str) or b.get("type") in ("text", "text-plain"))


def _document_in(message: BaseMessage) -> str | None:
    found = message.additional_kwargs.get("document")
    for b in message.content if isinstance(message.content, list) else []:
        if isinstance(b, dict) and b.get("type") == "file":
            ref = b.get("path") or b.get("url")
            if not ref:
                raise ValueError("ChatDocreader reads local files only: give a file block a 'url' (file://) or 'path'")
            u = urlparse(ref)
            if u.scheme not in ("", "file") and len(u.scheme) > 1:  # (one letter: a Windows drive)
                raise ValueError(f"ChatDocreader reads local files only, not {u.scheme}: URLs")
            found = unquote(u.path) if u.scheme == "file" else ref
    return found


def to_docreader(messages: list[BaseMessage]) -> tuple[str | None, list[tuple[str, str]], str, str | None]:
    """(system or None, history [(question, answer)], question, document from the messages or None)."""
    system, turns, document = [], [], None  # turns: [role, text] with consecutive roles joined
    for m in messages:
        document = _document_in(m) or document
        if isinstance(m, SystemMessage):
            system.append(_text_of(m))
            continue
        role = "ai" if isinstance(m, AIMessage) else "human"  # human, tool and other messages are input
        if turns and turns[-1][0] == role:
            turns[-1][1] += "\n\n" + _text_of(m)
        else:
            turns.append([role, _text_of(m)])
    if not turns or turns[-1][0] != "human" or not turns[-1][1].strip():
        raise ValueError("ChatDocreader needs the conversation to end with a non-empty human message (the question)")
    if turns[0][0] == "ai":
        turns.insert(0, ["human", ""])
    history = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2)]
    return ("\n\n".join(system) if system else None), history, turns[-1][1], document


class ChatDocreader(BaseChatModel):
    """Answers from the whole document with the local DSA model; the spans its sparse attention selected
    come back as `additional_kwargs["citations"]`, the answer's log id in `response_metadata`.

    Example:
        llm = ChatDocreader(document="contract.pdf", max_tokens=128)
        msg = llm.invoke("Which state's law governs this agreement?")
        msg.content, msg.additional_kwargs["citations"][0]["label"], msg.usage_metadata
    """

    model: str | None = None
    """Local Hugging Face model dir (Llama/Qwen2/Qwen3/Mistral) or hf:ORG/NAME; None: the default model."""
    document: str | None = None
    """Path of the document to read when the call and messages name none."""
    format: str | None = None
    password: SecretStr | None = None
    max_tokens: int = Field(default=256, ge=1)
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
        system, history, question, in_messages = to_docreader(messages)
        path = kwargs.get("document") or in_messages or self.document
        if not path:
            raise ValueError("ChatDocreader needs a document: set document=PATH, pass document=PATH to invoke(), "
                             "or add a {'type': 'file', 'url': 'file:///PATH'} block to a message")
        reader = reader_for(kwargs.get("model") or self.model, self._overrides(), self.db_path)
        pwd = self.password.get_secret_value() if self.password else None
        doc = document_for(path, format=self.format, password=pwd)
        with GENERATION_LOCK:
            reader.system = system
            try:
                return reader.ask(doc, question, history=history, max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
                                  dense=self.dense, on_text=on_text, log=self.log, max_spans=self.max_spans)
            finally:
                reader.system = None

    def _final_chunk(self, ans, stopped: bool) -> AIMessageChunk:
        d = ans.document
        citations = [{"document": d.path, "sha256": d.sha256, "rank": s.rank, "score": s.score,
                      "char_start": s.char_start, "char_end": s.char_end, "label": s.location.get("label", ""),
                      "location": s.location, "text": s.text} for s in ans.spans]
        cached = ans.timings.get("cached_prefix_tokens", 0)
        usage = {"input_tokens": ans.prompt_tokens, "output_tokens": ans.new_tokens,
                 "total_tokens": ans.prompt_tokens + ans.new_tokens, "input_token_details": {"cache_read": cached}}
        meta = {"model_name": ans.model, "model_provider": "docreader",
                "finish_reason": "stop" if stopped or ans.stop_reason == "eos" else "length",
                "mode": ans.mode, "dsa": ans.dsa, "timings": ans.timings, "answer_id": ans.id,
                "document": {"path": d.path, "format": d.format, "sha256": d.sha256, "chars": len(d.text),
                             "tokens": ans.document_tokens},
                "rope_factor": ans.rope_factor, "native_window": ans.native_window, "dropped_turns": ans.dropped_turns}
        return AIMessageChunk(content="", additional_kwargs={"citations": citations}, usage_metadata=usage,
                              response_metadata=meta, chunk_position="last")

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        emitter = _Emitter(stop or self.stop)
        ans = self._ask(messages, kwargs, emitter.feed)
        emitter.finish()
        final = self._final_chunk(ans, emitter.stopped)
        msg = AIMessage(content=emitter._text()[0].rstrip(), additional_kwargs=final.additional_kwargs,
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
        emitter = _Emitter(stop or self.stop)
        try:
            while True:
                kind, value = q.get()
                if kind == "error":
                    raise value
                text = emitter.feed(value) if kind == "text" else emitter.finish()
                if text:  # (BaseChatModel.stream reports each chunk to on_llm_new_token)
                    yield ChatGenerationChunk(message=AIMessageChunk(content=text))
                if kind == "done":
                    yield ChatGenerationChunk(message=self._final_chunk(value, emitter.stopped))
                    return
        finally:
            cancel.set()  # a consumer that stops early ends the generation at the next token
            worker.join()
