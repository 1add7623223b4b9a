"""Timestamps from chat exports (epoch seconds, ISO strings, clock times) as (date, "HH:MM")."""

from __future__ import annotations

import re
from datetime import datetime, timezone

_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::\d{2}(?:\.\d+)?)?\s*([AaPp]\.?[Mm]\.?)?$")


def clock(hour: int, minute: int, ampm: str | None = None) -> str:
    """24-hour "HH:MM", converting 12-hour times with an am/pm marker."""
    if ampm:
        pm = ampm.strip().lower().startswith("p")
        hour = hour % 12 + (12 if pm else 0)
    return f"{hour:02d}:{minute:02d}"


def parse_when(value: object) -> tuple[str | None, str | None]:
    """(ISO date or None, "HH:MM" or None) for any timestamp a chat export may hold.

    Epoch numbers are shown in UTC so that a transcript renders the same on every machine.
    """
    if value is None or value == "" or isinstance(value, bool):
        return None, None
    if isinstance(value, (int, float)) or (isinstance(value, str) and re.fullmatch(r"\d{9,}(\.\d+)?", value.strip())):
        seconds = float(value)
        if seconds > 1e11:  # milliseconds
            seconds /= 1000
        try:
            dt = datetime.fromtimestamp(seconds, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None, None
        return dt.date().isoformat(), dt.strftime("%H:%M")
    if not isinstance(value, str):
        return None, None
    raw = value.strip()
    m = _CLOCK.match(raw)
    if m:
        return None, clock(int(m.group(1)), int(m.group(2)), m.group(3))
    try:
        dt = datetime.fromisoformat(raw.replace(" UTC", "+00:00"))
    except ValueError:
        return None, raw[:25] or None
    if len(raw) <= 10:  # a bare date
        return dt.date().isoformat(), None
    return dt.date().isoformat(), dt.strftime("%H:%M")
