"""An answer's provenance as langchain-core's standard content-block annotations.

`ChatDocreader` messages keep `content` a string (and the provider-specific `additional_kwargs["citations"]`
and `["quotes"]`); their `content_blocks`, and `content` itself under `output_version="v1"`, are one text
block whose `annotations` follow `langchain_core.messages.content.Citation` exactly:

- each verified quote: `{"type": "citation", "url": "file:///…", "title": "contract.pdf", "cited_text": the
  passage as the document has it, "start_index"/"end_index": where the answer quotes it (indices into the
  response text, as the standard defines them; absent when the quote was cut from the text), "extras":
  {"kind": "quote", "char_start"/"char_end": the passage in the document's text, "label", "page"/"line"…}}`;
- each span the sparse attention read most, by rank: the same without start/end index (a span belongs to
  the whole answer, not to a part of it), `extras.kind` "attention_span", with its rank and score;
- each quote NOT found in the document: a `non_standard_annotation` (it is no citation).

The annotations are computed when the answer is complete (they need the final text) and travel in
`additional_kwargs["annotations"]`; the translator registered below for `model_provider="docreader"` puts
them on the text block, so streamed chunks aggregate to the same blocks as `invoke` returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.block_translators import register_translator

PROVIDER = "docreader"


def _source(document) -> dict:
    path = Path(document.path)
    src: dict[str, Any] = {"title": document.meta.get("title") or path.name}
    if path.is_absolute():  # (an inline document, `<inline NAME>`, has no URL)
        src = {"url": path.as_uri(), **src}
    return src


def annotations(text: str, answer) -> list[dict]:
    """The standard annotations of `answer` (an engine.Answer) whose response text is `text`."""
    d = answer.document
    src, common = _source(d), {"document": d.path, "sha256": d.sha256}
    out: list[dict] = []
    pos = 0
    for q in answer.quotes:
        if not q.verified:
            continue
        cite: dict[str, Any] = {"type": "citation", **src, "cited_text": d.text[q.char_start:q.char_end]}
        at = text.find(q.text, pos) if q.text else -1
        if at < 0 and q.text:
            at = text.find(q.text)
        if at >= 0:
            cite |= {"start_index": at, "end_index": at + len(q.text)}
            pos = at + len(q.text)
        cite["extras"] = {"kind": "quote", **common, "score": round(q.score, 2), **q.location,
                          "char_start": q.char_start, "char_end": q.char_end}
        out.append(cite)
    for s in answer.spans:
        out.append({"type": "citation", **src, "cited_text": s.text,
                    "extras": {"kind": "attention_span", **common, "rank": s.rank, "score": round(s.score, 6),
                               **s.location, "char_start": s.char_start, "char_end": s.char_end}})
    for q in answer.quotes:
        if not q.verified:
            out.append({"type": "non_standard_annotation",
                        "value": {"kind": "unverified_quote", **common, "text": q.text, "score": round(q.score, 2)}})
    return out


def _text_block(message: AIMessage | AIMessageChunk) -> list[dict]:
    text = message.content if isinstance(message.content, str) else "".join(
        b if isinstance(b, str) else b.get("text", "") for b in message.content
        if isinstance(b, str) or b.get("type") == "text")
    notes = message.additional_kwargs.get("annotations") or []
    if not text and not notes:
        return []  # a streamed chunk with nothing in it
    block: dict[str, Any] = {"type": "text", "text": text}
    if notes:
        block["annotations"] = list(notes)
    return [block]


register_translator(PROVIDER, _text_block, _text_block)
