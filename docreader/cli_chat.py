"""`docreader chat`'s loop: reading questions (line editing, history, several lines), Ctrl-C, resuming a
session, and what it says when a long conversation no longer fits beside its document.

The history policy itself is `docreader.prompt.build`'s: the document and the newest turns stay, older turns
become a short digest. The user is told on stderr (stdout keeps only the conversation), once each time it
changes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import models, store
from .document import Document, Region
from .terminal import say


def history_note(dropped: int, digest: str) -> str:
    """One line: how many earlier turns the model no longer reads word for word, and what stands in for them."""
    turns = f"{dropped} earlier turn{'s' if dropped != 1 else ''}"
    kept = "kept as a digest" if digest else "left out (no room beside the document even for a digest)"
    return f"note: {turns} no longer fit beside the document; {kept}"


class HistoryNote:
    """Says `history_note` when turns first stop fitting and whenever their number changes: a note after every
    answer of a long chat would bury the answers."""

    def __init__(self) -> None:
        self.told = 0

    def __call__(self, dropped: int, digest: str) -> None:
        if dropped and dropped != self.told:
            say(history_note(dropped, digest), err=True)
        self.told = dropped


# -- continuing a stored conversation (`chat -c`, `ask -c`) ---------------------------------------------------

@dataclass
class Resumed:
    document: Document
    session_id: str
    model: str | None  # None: the default model
    history: list[tuple[str, str]]


def resume(db: store.Log, session: str | None, model: str | None) -> Resumed:
    """The latest session (or `session`) with its document, read back from the log, and its turns."""
    row = store.get_session(db, session)
    drow = store.get_document(db, row["document_id"])
    doc = Document(drow["path"], drow["format"], drow["text"],
                   [Region(**r) for r in json.loads(drow["regions"])], {"kind": drow["kind"]})
    model = model or (row["model"] if row["model"] != models.DEFAULT_MODEL else None)
    return Resumed(doc, row["id"], model, store.session_history(db, row["id"]))


# -- reading questions: line editing, history, several lines -------------------------------------------------

HISTORY_FILE = "chat_history"  # in $DOCREADER_HOME: questions typed in earlier chats, for the up arrow
HISTORY_LINES = 1000
BLOCK = '"""'
CONTINUE = "... "


class LineEditing:
    """Line editing and a question history for `chat` on a terminal, through the stdlib's readline: once it
    is imported, input() gets cursor keys, Ctrl-R search and the up arrow. The history is loaded from and saved
    to `path`; a history file that cannot be read or written costs the history, never the chat."""

    def __init__(self, path: Path, interactive: bool) -> None:
        self.path = path
        self.readline = None
        if not interactive:
            return
        try:
            import readline
        except ImportError:  # e.g. a Python built without it: plain input() still works
            return
        self.readline = readline
        readline.set_history_length(HISTORY_LINES)
        try:
            if path.exists():
                readline.read_history_file(str(path))
        except OSError:
            pass

    def save(self) -> None:
        if self.readline is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(str(self.path))
        except OSError:
            pass


def read_question(ask: Callable[[str], str], prompt: str = "> ") -> str | None:
    """One question, possibly over several lines: a line ending in a backslash continues on the next, and
    a line starting with \"\"\" opens a block that runs to a line ending with \"\"\" (for pasting a passage).
    None at end of input (Ctrl-D). Ctrl-C (KeyboardInterrupt) propagates: the caller drops the question."""
    try:
        line = ask(prompt)
    except EOFError:
        return None
    if line.lstrip().startswith(BLOCK):
        first = line.lstrip()[len(BLOCK):]
        if first.rstrip().endswith(BLOCK):  # """one line"""
            return first.rstrip()[: -len(BLOCK)]
        lines = [first] if first.strip() else []
        while True:
            try:
                line = ask(CONTINUE)
            except EOFError:
                break
            if line.rstrip().endswith(BLOCK):
                last = line.rstrip()[: -len(BLOCK)]
                lines += [last] if last.strip() else []
                break
            lines.append(line)
        return "\n".join(lines)
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        try:
            line = ask(CONTINUE)
        except EOFError:
            line = ""
            break
    return "\n".join([*lines, line])


def terminal_input() -> Callable[[str], str] | None:
    """input() from the terminal, for `chat -` whose standard input was the document; None without one."""
    try:
        tty = open("/dev/tty", encoding="utf-8", errors="replace")
    except OSError:
        return None

    def ask(prompt: str) -> str:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        line = tty.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")
    return ask


# -- the loop -------------------------------------------------------------------------------------------------

EXIT_WORDS = ("exit", "quit", "/exit", "/quit")


def chat_loop(history: list[tuple[str, str]], ask: Callable[[str], str], answer: Callable[[str], object],
              editing: LineEditing | None = None) -> None:
    """Read questions until exit or Ctrl-D and answer each with `answer(question)` (which streams and shows
    it, and returns the Answer). Ctrl-C while an answer streams stops that answer (kept and logged with
    stop_reason "interrupted"); Ctrl-C before it starts, or at the prompt, drops the question: the session
    goes on either way."""
    tell_dropped = HistoryNote()
    try:
        while True:
            try:
                q = read_question(ask)
            except KeyboardInterrupt:
                say("\n(Ctrl-D or 'exit' to stop)", err=True)
                continue
            if q is None:
                say("")
                break
            if q.strip() in EXIT_WORDS:
                break
            if not q.strip():
                continue
            try:
                ans = answer(q)
            except KeyboardInterrupt:
                say("\n(interrupted before the answer began; ask again or go on)", err=True)
                continue
            tell_dropped(ans.dropped_turns, ans.history_digest)
            history.append((q, ans.text))
    finally:
        if editing is not None:
            editing.save()
