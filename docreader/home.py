"""Where docreader keeps its state: $DOCREADER_HOME (default ~/.cache/docreader)."""

import os
from pathlib import Path


def home() -> Path:
    path = Path(os.environ.get("DOCREADER_HOME") or Path.home() / ".cache" / "docreader")
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_path() -> Path:
    return home() / "docreader.db"


def models_dir() -> Path:
    return home() / "models"
