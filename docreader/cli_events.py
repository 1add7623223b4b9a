"""`ask --json-stream`: newline-delimited JSON events as the answer is made, for programs that want the
tokens as they come (`--json` prints one object at the end, for programs that want one document).

Each line is one object with an "event" key:

    {"event": "start", "index": 0, "question": "...", "session_id": "...", "model": "...", "document": {...}}
    {"event": "prefill", "done": 8192, "total": 10713}     (after each chunk of a long prompt)
    {"event": "token", "text": "The "}                     (a piece of the answer, as soon as it decodes)
    {"event": "answer", "answer": {...}}                   (exactly what --json prints for this question)

One start ... answer sequence per question. Errors stay one line on stderr with a non-zero exit, as
elsewhere; a stream that ends without its "answer" event was cut short.
"""

from __future__ import annotations

import json
import sys
from typing import IO


class EventStream:
    """Writes one JSON object a line to `out` (stdout), flushed at once so a reader sees each event live."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out

    def emit(self, event: str, **fields) -> None:
        out = self.out or sys.stdout
        out.write(json.dumps({"event": event, **fields}, ensure_ascii=False) + "\n")
        out.flush()

    def start(self, index: int, question: str, session_id: str | None, model: str, document) -> None:
        self.emit("start", index=index, question=question, session_id=session_id, model=model,
                  document={"path": document.path, "format": document.format, "sha256": document.sha256,
                            "chars": len(document.text)})

    def token(self, text: str) -> None:
        self.emit("token", text=text)

    def prefill(self, done: int, total: int) -> None:
        if done:  # the 0-of-n call only says the prefill starts
            self.emit("prefill", done=done, total=total)

    def answer(self, answer: dict) -> None:
        self.emit("answer", answer=answer)
