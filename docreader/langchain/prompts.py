"""docreader's prompt templates (prompts/*.txt) as LangChain prompt templates.

The text is exactly what docreader renders (docreader.prompt.template, str.format syntax); VARIABLES
declares each template's variables and the tests check every file against it."""

from __future__ import annotations

from langchain_core.prompts import ChatPromptTemplate, PromptTemplate

from ..prompt import PROMPTS, template

VARIABLES: dict[str, frozenset[str]] = {
    "system": frozenset(),
    "ask": frozenset({"document_name", "document", "question"}),
    "followup": frozenset({"question"}),
}


def names() -> list[str]:
    """Every template in prompts/."""
    return sorted(p.stem for p in PROMPTS.glob("*.txt"))


def load_prompt(name: str) -> PromptTemplate:
    """prompts/NAME.txt as a PromptTemplate (f-string format, the same syntax docreader uses)."""
    return PromptTemplate.from_template(template(name), template_format="f-string")


def chat_prompt() -> ChatPromptTemplate:
    """system + the first question with the whole document, as docreader sends it to the model."""
    return ChatPromptTemplate.from_messages([("system", template("system")), ("human", template("ask"))])
