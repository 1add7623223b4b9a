"""Input checks done before any parsing: the file exists, is a file, and is not too large to read."""

from __future__ import annotations

import math
import os
import stat
import sys
from pathlib import Path

from docreader.errors import DocreaderError

DEFAULT_MAX_BYTES = 50_000_000
MAX_BYTES_ENV = "DOCREADER_MAX_BYTES"
UNZIP_FACTOR = 4  # a DOCX/EPUB may expand to this many times --max-bytes in total
STDIN = "-"  # the file name that means "read the document from standard input"
STDIN_NAME = "<stdin>"  # how such a document is named in errors, answers and the log


def human_size(n: int, limit: bool = False) -> str:
    """Sizes as error messages print them: a file "80.0 MB", a limit "50 MB" (no ".0"), "17 bytes"."""
    for unit, scale in (("MB", 1_000_000), ("kB", 1_000)):
        if n >= scale:
            if limit and n % scale == 0:
                return f"{n // scale} {unit}"
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def env_count(name: str, default: int, what: str) -> int:
    """A positive whole number from $name (a float like "5e7" is fine), else `default`.

    "inf", "1e400", "nan" and garbage are one-line errors, not OverflowError/ValueError tracebacks.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value) or not 1 <= value <= 2**62:
        raise DocreaderError(f"{name} must be a number of {what} (a positive whole number), got {raw!r}")
    return int(value)


def resolve_max_bytes(max_bytes: int | None) -> int:
    """The size limit: the argument, else $DOCREADER_MAX_BYTES, else 50 MB."""
    if max_bytes is not None:
        if max_bytes <= 0:
            raise DocreaderError(f"--max-bytes must be positive, got {max_bytes}")
        return int(max_bytes)
    return env_count(MAX_BYTES_ENV, DEFAULT_MAX_BYTES, "bytes")


def read_input(path: Path, max_bytes: int) -> bytes:
    """Read the whole file after checking what it is and its size, so nothing huge is ever read."""
    where = str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DocreaderError("no such file", path=where) from None
    except PermissionError:
        raise DocreaderError("permission denied", path=where) from None
    except OSError as e:
        raise DocreaderError(f"cannot read file ({e.strerror or e})", path=where) from None
    if stat.S_ISDIR(st.st_mode):
        raise DocreaderError("is a directory", path=where)
    if not stat.S_ISREG(st.st_mode):
        raise DocreaderError("not a regular file", path=where)
    if st.st_size > max_bytes:
        raise DocreaderError(
            f"file is {human_size(st.st_size)}, over the {human_size(max_bytes, limit=True)} limit (--max-bytes)", path=where)
    try:
        with path.open("rb") as f:  # read to the end, not st_size: /proc files say 0 bytes but have content
            data = f.read(max_bytes + 1)  # the file may also have grown since stat
    except PermissionError:
        raise DocreaderError("permission denied", path=where) from None
    except OSError as e:
        raise DocreaderError(f"cannot read file ({e.strerror or e})", path=where) from None
    if len(data) > max_bytes:
        raise DocreaderError(f"file is over the {human_size(max_bytes, limit=True)} limit (--max-bytes)", path=where)
    if not data:
        raise DocreaderError("empty document", path=where)
    return data


def read_stdin(max_bytes: int, stream=None) -> bytes:
    """The document piped to standard input (`docreader ask - QUESTION < file`), with `read_input`'s limits.
    A terminal on stdin is an error, not a silent wait for a document typed by hand."""
    stream = stream if stream is not None else sys.stdin
    if stream is None or stream.isatty():
        raise DocreaderError("no document on standard input (pipe one in: `docreader ask - QUESTION < FILE`)",
                             path=STDIN_NAME)
    data = getattr(stream, "buffer", stream).read(max_bytes + 1)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > max_bytes:
        raise DocreaderError(f"input is over the {human_size(max_bytes, limit=True)} limit (--max-bytes)",
                             path=STDIN_NAME)
    if not data:
        raise DocreaderError("empty document", path=STDIN_NAME)
    return data
