"""Text from documents, file names, answers and the log, made safe to print on a terminal.

A document (or an answer quoting it) can hold escape sequences: OSC 52 writes the clipboard, OSC 0 sets the
window title, CSI moves the cursor or hides text, bidi overrides reorder what is shown. `printable` shows
each control character as an escape (`\\x1b`) instead of sending it; `--json` output keeps text exactly.
"""

from __future__ import annotations

from functools import wraps

import typer

from .errors import DocreaderError
from .store import MAX_INTEGER

_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0),  # C0, DEL, C1 (0x9b is a one-byte CSI)
             0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]  # bidi marks and overrides


def _table(keep: str) -> dict[int, str]:
    return {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _CONTROLS if chr(c) not in keep}


_LINES = _table("\n\t")
_ONE_LINE = _table("")


def printable(text: str, one_line: bool = False) -> str:
    """`text` with control characters escaped; `one_line` escapes newlines and tabs too (error messages)."""
    return text.translate(_ONE_LINE if one_line else _LINES)


# -- the CLI's output: every user error is one line on stderr and exit code 1, no traceback ------------------

def say(text: str = "", err: bool = False) -> None:
    """Print human output: document text, names and answers with their control characters escaped."""
    typer.echo(printable(text), err=err)


def in_range(name: str, value: int | None, low: int, high: int = MAX_INTEGER) -> None:
    """Numbers are checked before anything loads: one line, not an overflow or an error after the model."""
    if value is not None and not low <= value <= high:
        raise DocreaderError(f"{name} must be a whole number from {low:,} to {high:,} (got {value})")


def _fail(msg: str, code: int = 1):
    typer.echo(f"error: {printable(msg, one_line=True)}", err=True)
    raise typer.Exit(code)


def friendly(fn):
    """Turn DocreaderError (and a few well-known OS errors) into one line and exit 1.
    (Database errors the machine causes arrive as store.LogError, a DocreaderError.)"""
    @wraps(fn)
    def run(*a, **k):
        try:
            return fn(*a, **k)
        except DocreaderError as e:
            _fail(str(e))
        except OSError as e:  # e.g. DOCREADER_HOME is a file or not writable
            _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
    return run
