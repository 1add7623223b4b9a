"""docreader inside LangChain (langchain-core): a chat model, a document loader, agent tools, prompts."""

from .chat_model import ChatDocreader
from .loader import DocreaderLoader
from .prompts import chat_prompt, load_prompt
from .tools import (AskDocumentTool, AuditAnswerTool, ListDocumentsTool, ask_document, audit_answer,
                    docreader_tools, list_documents)

__all__ = ["ChatDocreader", "DocreaderLoader", "load_prompt", "chat_prompt", "docreader_tools", "ask_document",
           "audit_answer", "list_documents", "AskDocumentTool", "AuditAnswerTool", "ListDocumentsTool"]
