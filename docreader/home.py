"""Where docreader keeps its state: $DOCREADER_HOME (default ~/.cache/docreader)."""

import os
import tempfile
from pathlib import Path
from typing import Callable


def home() -> Path:
    path = Path(os.environ.get("DOCREADER_HOME") or Path.home() / ".cache" / "docreader")
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_path() -> Path:
    return home() / "docreader.db"


def models_dir() -> Path:
    return home() / "models"


def write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """write(tmp) fills a temporary file beside `path` (named `.{stem}.*.tmp`), which is then renamed over it: a
    reader sees the old file, the new one or none, and a failed write leaves nothing behind (the error propagates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
