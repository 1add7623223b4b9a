"""Render the whole document and the conversation into one prompt, keeping an exact token -> char map.

The chat template is rendered with a sentinel where the document goes; the text before and after it and
the document itself are tokenised separately and concatenated. Those ids are exactly what the model
reads, so each document token's character offsets (from the tokenizer) are exact by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .document import Document
from .errors import DocreaderError

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
SENTINEL = "\uE000DOCREADER_DOCUMENT\uE000"


def template(name: str) -> str:
    return (PROMPTS / f"{name}.txt").read_text(encoding="utf-8").strip()


@dataclass
class Prompt:
    input_ids: list[int]
    doc_start: int  # index of the first document token in input_ids
    doc_offsets: list[tuple[int, int]]  # per document token: [start, end) chars in Document.text
    dropped_turns: int = 0  # earlier turns left out to fit the window
    history_turns: int = 0
    meta: dict = field(default_factory=dict)
    question_span: tuple[int, int] = (0, 0)  # [start, end) of the current question's tokens in input_ids

    @property
    def doc_end(self) -> int:
        return self.doc_start + len(self.doc_offsets)


def _slot(key: str) -> str:
    return f"\uE000DOCREADER_{key}\uE000"


_SLOT = re.compile("\uE000DOCREADER_([A-Z0-9]+)\uE000")  # our keys only: user text never reaches the split


def messages_for(document: Document, question: str, history: list[tuple[str, str]],
                 system: str | None = None) -> tuple[list[dict], dict[str, str]]:
    """system, then the document with the first kept question, then the later turns. Every text that is
    not ours (document, its file name, a caller's system prompt, questions, earlier answers) is a slot,
    filled with its own tokens by `_render`, so none of it can open or close a turn.
    -> (chat messages, slot key -> text)."""
    turns = [*history, (question, None)]
    texts: dict[str, str] = {"NAME": Path(document.path).name}
    if system is None:
        msgs = [{"role": "system", "content": template("system")}]
    else:
        texts["SYSTEM"] = system
        msgs = [{"role": "system", "content": _slot("SYSTEM")}]
    for i, (q, a) in enumerate(turns):
        texts[f"Q{i}"] = q
        if i == 0:
            content = template("ask").format(document_name=_slot("NAME"), document=SENTINEL, question=_slot(f"Q{i}"))
        else:
            content = template("followup").format(question=_slot(f"Q{i}"))
        msgs.append({"role": "user", "content": content})
        if a is not None:
            texts[f"A{i}"] = a
            msgs.append({"role": "assistant", "content": _slot(f"A{i}")})
    return msgs, texts


def tokenize_document(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    # split_special_tokens: a document that contains "<|im_end|>" or "<|im_start|>assistant" is text, not
    # control tokens that would end the user's turn or open a fake assistant turn inside the prompt.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _render(tokenizer, msgs: list[dict], texts: dict[str, str], doc_ids: list[int]
            ) -> tuple[list[int], int, dict[str, tuple[int, int]]]:
    """The chat template's ids with every slot filled: our template text may hold control tokens, user
    text (questions, answers) never does. -> (input_ids, index of the first document token, slot key ->
    [start, end) of its tokens)."""
    rendered = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    parts = _SLOT.split(rendered.replace(SENTINEL, _slot("DOC")))  # text, key, text, key, ..., text
    ids: list[int] = []
    doc_start = -1
    where: dict[str, tuple[int, int]] = {}
    for i, part in enumerate(parts):
        if i % 2 == 0:
            ids += tokenizer(part, add_special_tokens=False)["input_ids"] if part else []
        elif part == "DOC":
            doc_start = len(ids)
            ids += doc_ids
        else:
            start = len(ids)
            ids += tokenizer(texts[part], add_special_tokens=False, split_special_tokens=True)["input_ids"]
            where[part] = (start, len(ids))
    return ids, doc_start, where


def build(tokenizer, document: Document, question: str, history: list[tuple[str, str]] | None = None,
          window: int = 8192, max_new_tokens: int = 256, doc_tokens: tuple | None = None,
          system: str | None = None) -> Prompt:
    """The prompt for `question`; drops the oldest turns (never the document) when it would not fit.
    `system` replaces prompts/system.txt."""
    if not question.strip():
        raise DocreaderError("the question is empty")
    history = list(history or [])
    ids, offsets = doc_tokens or tokenize_document(tokenizer, document.text)
    dropped = 0
    while True:
        msgs, texts = messages_for(document, question, history[dropped:], system)
        input_ids, doc_start, where = _render(tokenizer, msgs, texts, ids)
        total = len(input_ids)
        if total + max_new_tokens <= window:
            return Prompt(input_ids, doc_start, offsets, dropped, len(history) - dropped,
                          question_span=where[f"Q{len(history) - dropped}"])
        if dropped < len(history):
            dropped += 1
            continue
        raise DocreaderError(
            f"too long for the model: the document is {len(ids):,} tokens, the prompt {total:,} tokens; with "
            f"{max_new_tokens} new tokens that exceeds the {window:,}-token window (no silent truncation)",
            path=document.path)
