"""IRC text logs: `[hh:mm] <nick> text`, `* nick action` and `=== nick has joined` system lines.

Every log line becomes one message, so message numbers match the log's line numbers (and the
reply-link annotations that refer to them).
"""

from __future__ import annotations

import re

from docreader.loaders.chat import Message
from docreader.loaders.chat_time import parse_when

_STAMP = r"(?:\[(?P<stamp>(?:\d{4}-\d{2}-\d{2}[ T])?\d{1,2}:\d{2}(?::\d{2})?)\]|(?P<bare>\d{1,2}:\d{2}(?::\d{2})?))"
MESSAGE = re.compile(rf"^(?:{_STAMP}\s+)?<[@+%&~ ]?(?P<nick>[^>]{{1,64}}?) ?>\s?(?P<text>.*)$")
SYSTEM = re.compile(rf"^(?:{_STAMP}\s+)?(?:===|-!-|\*\*\*|-->|<--|--)\s+(?P<text>.*)$")
ACTION = re.compile(rf"^(?:{_STAMP}\s+)?\*\s+(?P<nick>\S+)\s+(?P<text>.*)$")
_TIMED_MESSAGE = re.compile(rf"^{_STAMP}\s+(?:<[^>]{{1,64}}>|\*\s|===|-!-|\*\*\*)")


def is_irc_line(line: str) -> bool:
    """Used by format detection: a line that can only come from an IRC log."""
    return bool(_TIMED_MESSAGE.match(line) or line.startswith("=== ") and len(line) > 6)


def _when(m: re.Match) -> tuple[str | None, str | None]:
    stamp = m.group("stamp") or m.group("bare")
    return parse_when(stamp) if stamp else (None, None)


def parse_irc(text: str) -> list[Message]:
    messages: list[Message] = []
    for line in text.split("\n"):
        line = line.rstrip()
        if not line.strip():
            continue
        if m := MESSAGE.match(line):
            date, time = _when(m)
            messages.append(Message(m.group("nick"), m.group("text"), time, date))
        elif m := SYSTEM.match(line):
            date, time = _when(m)
            body = m.group("text").strip()
            speaker = body.split(" ", 1)[0] if body else "system"
            messages.append(Message(speaker, body, time, date, kind="system"))
        elif m := ACTION.match(line):
            date, time = _when(m)
            messages.append(Message(m.group("nick"), m.group("text"), time, date, kind="action"))
        elif messages:
            messages[-1].text += "\n" + line  # a wrapped line belongs to the message before it
        else:
            messages.append(Message("system", line, kind="system"))
    return messages
