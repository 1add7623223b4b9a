"""WhatsApp text exports, Android (`12/31/23, 14:03 - alice: text`) and iOS (`[31/12/2023, 14:03:05] alice: text`).

Lines without a timestamp continue the message before them. Whether dates are day- or month-first
is decided once per file, from any field that is over 12.
"""

from __future__ import annotations

import re

from docreader.loaders.chat import Message
from docreader.loaders.chat_time import clock

_DATE = r"(?P<a>\d{1,4})[./-](?P<b>\d{1,2})[./-](?P<c>\d{1,4})"
_TIME = r"(?P<h>\d{1,2}):(?P<m>\d{2})(?::\d{2})?(?:[\s\u202f\u00a0]?(?P<ampm>[AaPp]\.?\s?[Mm]\.?))?"
ANDROID = re.compile(rf"^[\u200e\u200f]?{_DATE},?\s+{_TIME}\s+[-–]\s+(?P<rest>.*)$")
IOS = re.compile(rf"^[\u200e\u200f]?\[{_DATE},?\s+{_TIME}\]\s+(?P<rest>.*)$")
_SPEAKER = re.compile(r"^(?P<speaker>[^:\n]{1,80}?):\s(?P<text>.*)$|^(?P<speaker2>[^:\n]{1,80}?):$")


def header(line: str) -> re.Match | None:
    """The timestamp header of a line that starts a WhatsApp message, if it is one."""
    return ANDROID.match(line) or IOS.match(line)


def _day_first(matches: list[re.Match]) -> bool:
    for m in matches:
        a, b = m.group("a"), m.group("b")
        if len(a) == 4:
            continue
        if int(a) > 12:
            return True
        if int(b) > 12:
            return False
    return True  # ambiguous everywhere: most of the world writes the day first


def _iso_date(m: re.Match, day_first: bool) -> str | None:
    a, b, c = m.group("a"), m.group("b"), m.group("c")
    if len(a) == 4:
        year, month, day = int(a), int(b), int(c)
    else:
        day, month = (int(a), int(b)) if day_first else (int(b), int(a))
        year = int(c) + (2000 if len(c) <= 2 else 0)
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    return f"{year:04d}-{month:02d}-{day:02d}"


def parse_whatsapp(text: str) -> list[Message]:
    lines = text.split("\n")
    heads = [header(ln) for ln in lines]
    day_first = _day_first([m for m in heads if m])
    messages: list[Message] = []
    for line, m in zip(lines, heads):
        if m is None:
            if messages and line.strip():
                messages[-1].text += "\n" + line.replace("\u200e", "")
            continue
        time = clock(int(m.group("h")), int(m.group("m")), m.group("ampm"))
        date = _iso_date(m, day_first)
        rest = m.group("rest").replace("\u200e", "").strip()
        s = _SPEAKER.match(rest)
        if s:
            speaker = (s.group("speaker") or s.group("speaker2")).strip()
            messages.append(Message(speaker, s.group("text") or "", time, date))
        else:  # "alice added bob", "Messages and calls are end-to-end encrypted…"
            messages.append(Message("system", rest, time, date, kind="system"))
    return messages
