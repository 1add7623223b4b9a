"""LangChain messages -> docreader's (system, history, question, document), and the stream emitter."""

from __future__ import annotations

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage

from .file_blocks import InlineFile, file_ref


class Emitter:
    """Turns raw streamed pieces into what the final answer will be: stripped, and cut where the first
    stop sequence to appear starts (generation itself runs on to max_tokens; its tokens are dropped).

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
        keep = len(text[: max(keep, 0)].rstrip())  # never end on whitespace a later cut would strip
        out = text[self.sent : max(keep, self.sent)]
        self.sent += len(out)
        return out

    def text(self) -> str:
        """The answer as it stands (all of it once the generation has ended)."""
        return self._text()[0].rstrip()

    def finish(self) -> str:
        text = self.text()
        out, self.sent = text[self.sent :], len(text)
        return out


def _text_of(message: BaseMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    return "".join(b if isinstance(b, str) else b.get("text", "") for b in message.content
                   if isinstance(b, str) or b.get("type") in ("text", "text-plain"))


def _document_in(message: BaseMessage) -> str | InlineFile | None:
    found = message.additional_kwargs.get("document")
    for b in message.content if isinstance(message.content, list) else []:
        if isinstance(b, dict) and b.get("type") == "file":
            found = file_ref(b)
    return found


def to_docreader(messages: list[BaseMessage]) -> tuple[str | None, list[tuple[str, str]], str, str | InlineFile | None]:
    """(system or None, history [(question, answer)], question, document from the messages or None: a path
    or inline bytes, from the latest message that has one)."""
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
