"""Tools for agents: ask_document, audit_answer, list_documents. They run the same `Reader.ask` as the
CLI and write to the same SQLite log ($DOCREADER_HOME/docreader.db unless db_path is set).

    from docreader.langchain import docreader_tools
    tools = docreader_tools(max_new_tokens=128)        # or the default instances below
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, Field

from .. import store
from ..errors import DocreaderError
from ..quotes import quote_line
from ._readers import GENERATION_LOCK, allowed_path, document_for, reader_for


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
                        "the answer, its log id and where in the document the model's sparse attention read.")
    args_schema: type[BaseModel] = AskArgs
    max_new_tokens: int = 256
    overrides: dict = Field(default_factory=dict)  # DSA knobs: top_k, n_blocks, local_window, sink_tokens

    def _call(self, path: str, question: str) -> tuple[str, list[dict]]:
        reader = reader_for(self.model, self.overrides, self.db_path)
        doc = document_for(path, root_dir=self.root_dir)
        with GENERATION_LOCK:
            ans = reader.ask(doc, question, max_new_tokens=self.max_new_tokens)
        spans = ans.to_json()["spans"]
        where = "; ".join(s["label"] for s in spans[:3] if s["label"]) or "no spans selected"
        quoted = "".join(f"\n{quote_line(q.to_json())}" for q in ans.quotes)
        content = (f"{ans.text}\n{quoted}\n[answer #{ans.id} on {doc.path}; most-read parts: {where}; "
                   f"audit_answer({ans.id}) quotes them]")
        return content, [{**s, "document": doc.path, "answer_id": ans.id} for s in spans]


class AuditAnswerTool(_DocreaderTool):
    name: str = "audit_answer"
    description: str = "Show a logged answer again with the document spans its sparse attention read, quoted."
    args_schema: type[BaseModel] = AuditArgs
    quote_chars: int = 300

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
                    root_dir: str | None = None, **overrides: int | None) -> list[BaseTool]:
    """[ask_document, audit_answer, list_documents] sharing one model, one log and one root directory."""
    shared = {"model": model, "db_path": db_path, "root_dir": root_dir}
    return [AskDocumentTool(**shared, max_new_tokens=max_new_tokens, overrides=overrides),
            AuditAnswerTool(**shared), ListDocumentsTool(**shared)]


ask_document, audit_answer, list_documents = docreader_tools()
