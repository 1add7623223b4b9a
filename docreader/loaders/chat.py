"""Chat messages, whatever their source, rendered as one transcript line per message."""

from __future__ import annotations

from dataclasses import dataclass

from docreader.document import Document
from docreader.loaders.budget import Budget
from docreader.loaders.builder import TextBuilder, short_label


@dataclass
class Message:
    """One chat message as parsed from any source format."""

    speaker: str
    text: str
    time: str | None = None  # "14:03"
    date: str | None = None  # "2023-12-31", when the source has dates
    kind: str = "message"  # "message" | "action" (/me) | "system" (joins, notices)
    thread: str | None = None  # conversation title, for exports holding several conversations


def one_line(text: str) -> str:
    """A multi-line message as one line: its non-empty lines joined with " / "."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").split("\n")]
    return " / ".join(ln for ln in lines if ln)


def render_line(msg: Message) -> str:
    stamp = f"[{msg.time}] " if msg.time else ""
    body = one_line(msg.text)
    if msg.kind == "action":
        return f"{stamp}* {msg.speaker} {body}".rstrip()
    if msg.kind == "system":
        return f"{stamp}=== {body}".rstrip()
    return f"{stamp}{msg.speaker}: {body}".rstrip()


def render_chat(path: str, messages: list[Message], meta: dict, budget: Budget | None = None) -> Document:
    """The transcript: day separators where the date changes, a heading per thread, regions per message."""
    b = TextBuilder(budget)
    date = thread = None
    thread_start: tuple[int, str] | None = None
    for i, msg in enumerate(messages):
        if msg.thread is not None and msg.thread != thread:
            if thread_start is not None:
                b.add_region("section", thread_start[0], len(b) - 1, thread_start[1])
            b.separate(2)
            thread, date = msg.thread, None
            start, _ = b.write(f"## {one_line(msg.thread) or 'conversation'}\n")
            thread_start = (start, short_label(msg.thread) or "conversation")
        if msg.date and msg.date != date:
            date = msg.date
            b.write(f"--- {date} ---\n")
        start, end = b.write(render_line(msg))
        speaker = msg.speaker or "system"
        label = f"message {i + 1} — {speaker}" + (f", {msg.time}" if msg.time else "")
        region_meta = {"speaker": speaker, "time": msg.time}
        if msg.date:
            region_meta["date"] = msg.date
        if msg.kind != "message":
            region_meta["type"] = msg.kind
        b.add_region("message", start, end, label, region_meta)
        b.write("\n")
    if thread_start is not None:
        b.add_region("section", thread_start[0], max(len(b) - 1, thread_start[0] + 1), thread_start[1])
    text = b.text()
    speakers = sorted({m.speaker for m in messages if m.kind == "message" and m.speaker})
    return Document(path=path, format="chat", text=text, regions=b.sorted_regions(),
                    meta={"kind": "chat", "messages": len(messages), "speakers": speakers, **meta})
