"""What `docreader chat` says when a long conversation no longer fits beside its document.

The policy itself is `docreader.prompt.build`'s: the document and the newest turns stay, older turns become
a short digest. The user is told on stderr (stdout keeps only the conversation), once each time it changes.
"""

from __future__ import annotations

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
