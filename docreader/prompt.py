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
from .quotes import parse

PROMPTS = Path(__file__).resolve().parent / "prompts"  # package data: shipped in the wheel
SENTINEL = "\uE000DOCREADER_DOCUMENT\uE000"


def template(name: str) -> str:
    return (PROMPTS / f"{name}.txt").read_text(encoding="utf-8").strip()


@dataclass
class Prompt:
    input_ids: list[int]
    doc_start: int  # index of the first document token in input_ids
    doc_offsets: list[tuple[int, int]]  # per document token: [start, end) chars in Document.text
    dropped_turns: int = 0  # earlier turns that did not fit the window (see `build`)
    history_turns: int = 0  # earlier turns kept verbatim
    meta: dict = field(default_factory=dict)
    question_span: tuple[int, int] = (0, 0)  # [start, end) of the current question's tokens in input_ids
    digest: str = ""  # what the model reads in place of the dropped turns ("" when none, or no room for it)

    @property
    def doc_end(self) -> int:
        return self.doc_start + len(self.doc_offsets)


def _slot(key: str) -> str:
    return f"\uE000DOCREADER_{key}\uE000"


_SLOT = re.compile("\uE000DOCREADER_([A-Z0-9]+)\uE000")  # our keys only: user text never reaches the split


def messages_for(document: Document, question: str, history: list[tuple[str, str]],
                 system: str | None = None, digest: str = "") -> tuple[list[dict], dict[str, str]]:
    """system, then the document with the digest of dropped turns and the first kept question, then the
    later turns. Every text that is not ours (document, its file name, a caller's system prompt, questions,
    earlier answers, the digest quoting them) is a slot, filled with its own tokens by `_render`, so none of
    it can open or close a turn. The digest comes after the document: the cached document prefix stays valid
    however many turns are dropped. -> (chat messages, slot key -> text)."""
    turns = [*history, (question, None)]
    texts: dict[str, str] = {"NAME": Path(document.path).name}
    if digest:
        texts["DIGEST"] = digest
    if system is None:
        msgs = [{"role": "system", "content": template("system")}]
    else:
        texts["SYSTEM"] = system
        msgs = [{"role": "system", "content": _slot("SYSTEM")}]
    for i, (q, a) in enumerate(turns):
        texts[f"Q{i}"] = q
        if i == 0:
            first = (_slot("DIGEST") if digest else "") + _slot(f"Q{i}")
            content = template("ask").format(document_name=_slot("NAME"), document=SENTINEL, question=first)
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


def _render(tokenizer, msgs: list[dict], texts: dict[str, str], doc_ids: list[int], memo: dict | None = None
            ) -> tuple[list[int], int, dict[str, tuple[int, int]]]:
    """The chat template's ids with every slot filled: our template text may hold control tokens, user
    text (questions, answers) never does. -> (input_ids, index of the first document token, slot key ->
    [start, end) of its tokens). `memo` keeps each text's ids across `build`'s attempts, so a long chat
    is tokenised once per question, not once per attempt."""
    memo = {} if memo is None else memo

    def encode(text: str, user: bool) -> list[int]:
        if (user, text) not in memo:
            extra = {"split_special_tokens": True} if user else {}
            memo[user, text] = tokenizer(text, add_special_tokens=False, **extra)["input_ids"]
        return memo[user, text]

    rendered = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    parts = _SLOT.split(rendered.replace(SENTINEL, _slot("DOC")))  # text, key, text, key, ..., text
    ids: list[int] = []
    doc_start = -1
    where: dict[str, tuple[int, int]] = {}
    for i, part in enumerate(parts):
        if i % 2 == 0:
            ids += encode(part, user=False) if part else []
        elif part == "DOC":
            doc_start = len(ids)
            ids += doc_ids
        else:
            start = len(ids)
            ids += encode(texts[part], user=True)
            where[part] = (start, len(ids))
    return ids, doc_start, where


# -- what stands in for the turns a long chat can no longer hold ---------------------------------------------

DIGEST_LINES = 8  # dropped turns summarised a line each (the newest); older ones are only counted
DIGEST_QUESTION_CHARS = 120  # a summarised question is cut here
DIGEST_ANSWER_CHARS = 160  # and its answer's first sentence here (~40 tokens: a line stays short)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _gist(answer: str) -> str:
    """The first sentence of an answer's short answer (the text after `Answer:`, without its quotes)."""
    short = " ".join(parse(answer).answer.split()) or " ".join(answer.split())
    end = re.search(r"[.!?](\s|$)", short)
    return short[: end.start() + 1] if end else short


def digest(dropped: list[tuple[str, str]]) -> str:
    """A few lines in place of turns that no longer fit: the newest `DIGEST_LINES` as their question and the
    first sentence of their answer, both cut short; older ones counted. Made from the text, not by the model:
    free, and the same conversation always gives the same prompt (and the same answer). "" for no turns."""
    if not dropped:
        return ""
    n, shown = len(dropped), dropped[-DIGEST_LINES:]
    head = (f"[{n} earlier turn{'s' if n > 1 else ''} of this conversation no longer fit beside the document; "
            + ("in brief" if len(shown) == n else f"the last {len(shown)} in brief") + ":")
    lines = [f"- Q: {_clip(q, DIGEST_QUESTION_CHARS)} A: {_clip(_gist(a), DIGEST_ANSWER_CHARS)}" for q, a in shown]
    return "\n".join([head, *lines]) + "]\n\n"


def build(tokenizer, document: Document, question: str, history: list[tuple[str, str]] | None = None,
          window: int = 8192, max_new_tokens: int = 256, doc_tokens: tuple | None = None,
          system: str | None = None) -> Prompt:
    """The prompt for `question` with as much of the conversation as the window holds. The policy, when the
    document, the turns and `max_new_tokens` outgrow `window`: the system prompt and the whole document always
    stay; the older turns are replaced by their `digest` (a line each: far shorter than the turn); the newest
    turns that fit beside the document and the digest stay word for word. When not even the question fits
    beside the document and the digest, the digest goes and the newest turns that fit without it stay. Only a
    document and question that do not fit alone are an error (never a silent cut of the document). `system`
    replaces prompts/system.txt."""
    if not question.strip():
        raise DocreaderError("the question is empty")
    history = list(history or [])
    ids, offsets = doc_tokens or tokenize_document(tokenizer, document.text)
    memo: dict = {}

    def attempts():  # the oldest turns go first, into the digest; with no room even for it, without it
        yield from ((k, digest(history[:k])) for k in range(len(history) + 1))
        yield from ((k, "") for k in range(1, len(history) + 1))

    for dropped, note in attempts():
        msgs, texts = messages_for(document, question, history[dropped:], system, note)
        input_ids, doc_start, where = _render(tokenizer, msgs, texts, ids, memo)
        total = len(input_ids)
        if total + max_new_tokens <= window:
            return Prompt(input_ids, doc_start, offsets, dropped, len(history) - dropped,
                          question_span=where[f"Q{len(history) - dropped}"], digest=note)
    raise DocreaderError(
        f"too long for the model: the document is {len(ids):,} tokens, the prompt {total:,} tokens; with "
        f"{max_new_tokens} new tokens that exceeds the {window:,}-token window (no silent truncation)",
        path=document.path)
