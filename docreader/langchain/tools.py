"""Tools for agents: ask_document, audit_answer, list_documents. They run the same `Reader.ask` as the
CLI and write to the same SQLite log ($DOCREADER_HOME/docreader.db unless db_path is set).

    from docreader.langchain import docreader_tools
    tools = docreader_tools(max_new_tokens=128)        # or the default instances below
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, Field, field_validator, model_validator

from .. import store
from ..errors import DocreaderError
from ..quotes import quote_line
from ._readers import GENERATION_LOCK, allowed_path, document_for, reader_for
from .args import check_call, checked_init
from .passages import answer_summary

DSA_KNOBS = ("top_k", "n_blocks", "local_window", "sink_tokens")


class AskArgs(BaseModel):
    path: str = Field(description="Path of the document (PDF, DOCX, TXT, Markdown, HTML, EPUB or a chat log)")
    question: str = Field(description="The question to answer from the whole document")


class AuditArgs(BaseModel):
    answer_id: int = Field(description="The id of a logged answer (ask_document reports it)")


class NoArgs(BaseModel):
    pass


class _DocreaderTool(BaseTool):
    model: str | None = None
    db_path: str | None = None
    root_dir: str | None = None
    """Documents the tools read, quote or list must lie inside this directory (symlinks resolved); None: the
    current working directory at call time."""
    response_format: str = "content_and_artifact"
    handle_tool_error: bool = True  # a bad path or id goes back to the agent as the tool's message

    @model_validator(mode="before")
    @classmethod
    def _known_args(cls, values: Any) -> Any:
        return checked_init(cls, values, remote_only=())

    def _run(self, *args: Any, **kwargs: Any) -> tuple[str, Any]:
        kwargs.pop("run_manager", None)
        try:
            return self._call(**kwargs)
        except DocreaderError as e:
            raise ToolException(f"error: {e}") from e

    def _inside(self, path: str) -> bool:
        try:
            allowed_path(path, self.root_dir)
        except DocreaderError:
            return False
        return True


class AskDocumentTool(_DocreaderTool):
    name: str = "ask_document"
    description: str = ("Answer a question from the WHOLE document at `path` with docreader's local model. Returns "
                        "the answer, the passages it quotes (checked against the document) and the passages "
                        "the model read most, each quoted with its page/line, and the answer's log id.")
    args_schema: type[BaseModel] = AskArgs
    max_new_tokens: int = Field(default=256, ge=1)
    overrides: dict = Field(default_factory=dict)  # DSA knobs: top_k, n_blocks, local_window, sink_tokens
    passages: int = Field(default=3, ge=0)
    """How many of the most-read passages the content quotes (the artifact has them all)."""

    @field_validator("overrides")
    @classmethod
    def _knobs(cls, v: dict) -> dict:
        check_call("AskDocumentTool overrides", v, DSA_KNOBS)
        return v

    def _call(self, path: str, question: str) -> tuple[str, list[dict]]:
        reader = reader_for(self.model, self.overrides, self.db_path)
        doc = document_for(path, root_dir=self.root_dir)
        with GENERATION_LOCK:
            ans = reader.ask(doc, question, max_new_tokens=self.max_new_tokens)
        spans = ans.to_json()["spans"]
        return answer_summary(ans, self.passages), [{**s, "document": doc.path, "answer_id": ans.id} for s in spans]


class AuditAnswerTool(_DocreaderTool):
    name: str = "audit_answer"
    description: str = "Show a logged answer again with the document spans its sparse attention read, quoted."
    args_schema: type[BaseModel] = AuditArgs
    quote_chars: int = 300
    html_dir: str | None = None
    """When set, each call also writes the answer's audit page (`docreader audit ID --html`) into this directory
    and returns its path as the artifact (instead of the answer's dict)."""

    def _call(self, answer_id: int) -> tuple[str, dict]:
        db = store.open_db(self.db_path)
        row = store.get_answer(db, answer_id)
        doc = store.get_document(db, row["document_id"])
        allowed_path(doc["path"], self.root_dir)  # answers about files outside the root are not quoted back
        out = {**{k: row[k] for k in ("id", "session_id", "question", "answer", "model", "mode", "created")},
               "dsa": json.loads(row["dsa"]), "document": {"path": doc["path"], "sha256": doc["id"]},
               "spans": [{"rank": s["rank"], "score": s["score"], "text": doc["text"][s["char_start"]:s["char_end"]],
                          **json.loads(s["location"])} for s in row["spans"]], "quotes": row["quotes"]}
        lines = [f"Answer #{out['id']} ({out['model']}, {out['mode']} attention) on {doc['path']}",
                 f"Q: {out['question']}", f"A: {out['answer']}", *(quote_line(q) for q in out["quotes"]),
                 "Spans read (indexer selections, not proof of use):"]
        for s in out["spans"]:
            quote = " ".join(s["text"].split())
            quote = quote if len(quote) <= self.quote_chars else quote[: self.quote_chars - 1] + "…"
            lines.append(f"{s['rank']}. [{s['label']}] chars {s['char_start']}-{s['char_end']}: \"{quote}\"")
        if self.html_dir:
            from ..audit_record import load_record
            from ..cli_audit import write_html
            page = write_html(load_record(db, answer_id), Path(self.html_dir) / f"docreader-audit-{answer_id}.html")
            return "\n".join(lines + [f"Audit page: {page}"]), str(page)
        return "\n".join(lines), out


class ListDocumentsTool(_DocreaderTool):
    name: str = "list_documents"
    description: str = "List the documents docreader has answered questions about (path, format, size, answers)."
    args_schema: type[BaseModel] = NoArgs

    def _call(self) -> tuple[str, list[dict]]:
        rows = [r for r in store.list_documents(store.open_db(self.db_path)) if self._inside(r["path"])]
        text = "\n".join(f"{r['path']} ({r['format']}, {r['chars']:,} chars, {r['answers']} answers)" for r in rows)
        return text or "no documents yet", rows


def docreader_tools(model: str | None = None, db_path: str | None = None, max_new_tokens: int = 256,
                    root_dir: str | None = None, audit_html_dir: str | None = None,
                    **overrides: int | None) -> list[BaseTool]:
    """[ask_document, audit_answer, list_documents] sharing one model, one log and one root directory;
    `audit_html_dir`: audit_answer writes audit pages there and returns their paths as its artifact.
    `overrides`: the DSA knobs (top_k, n_blocks, local_window, sink_tokens); any other name is a TypeError."""
    check_call("docreader_tools()", overrides, DSA_KNOBS)
    shared = {"model": model, "db_path": db_path, "root_dir": root_dir}
    return [AskDocumentTool(**shared, max_new_tokens=max_new_tokens, overrides=overrides),
            AuditAnswerTool(**shared, html_dir=audit_html_dir), ListDocumentsTool(**shared)]


ask_document, audit_answer, list_documents = docreader_tools()
