"""Shared fixtures for the application-layer tests.

Every test gets its own empty DOCREADER_HOME (tmp dir). The default model is installed once, in the real
home (CI starts from a clean machine: `install_default()` converts it, ~25 s, under a file lock so the two
xdist workers don't convert it twice), and tests that need it get a symlink to it inside their tmp home.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Under pytest-xdist, share the cores among the workers: n workers each running torch with one thread per
# core oversubscribe the machine, and spinning OpenMP threads then make a real-model test ~10x slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(_threads)

# Tests that read real documents without the `home` fixture (module-scoped readers, subprocesses) must not fill
# the user's document cache or log: the whole session runs in a temporary DOCREADER_HOME whose models/ is the
# real one (converted once there, shared by the xdist workers and later runs).
_REAL_HOME = Path(os.environ.get("DOCREADER_HOME") or Path.home() / ".cache" / "docreader")
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="docreader-test-home-"))
(_REAL_HOME / "models").mkdir(parents=True, exist_ok=True)
os.symlink(_REAL_HOME / "models", _SESSION_HOME / "models", target_is_directory=True)
os.environ["DOCREADER_HOME"] = str(_SESSION_HOME)
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)

ROOT = Path(__file__).resolve().parent.parent
IRC_SAMPLE = ROOT / "sample_docs" / "ubuntu_irc_2005-07-06_14.raw.txt"


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The default model's directory in the real home, converted (and downloaded) if missing."""
    from docreader import models
    return models.install_default(progress=lambda m: None, allow_download=True)


@pytest.fixture(scope="session")
def tokenizer(real_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(real_model_dir), local_files_only=True)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty DOCREADER_HOME for this test."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("DOCREADER_HOME", str(h))
    return h


@pytest.fixture
def model_home(home, real_model_dir) -> Path:
    """`home` with the default model available in it (a symlink to the real one)."""
    (home / "models").mkdir()
    os.symlink(real_model_dir, home / "models" / real_model_dir.name, target_is_directory=True)
    return home


@pytest.fixture(scope="session")
def irc_text() -> str:
    """The start of the real IRC sample log: 20 whole lines (~600 tokens), so a real-model run stays short."""
    lines = IRC_SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(lines[:20])


@pytest.fixture
def irc_file(tmp_path, irc_text) -> Path:
    path = tmp_path / "irc_log.txt"
    path.write_text(irc_text, encoding="utf-8")
    return path


def db_counts(home: Path) -> dict[str, int]:
    """Row counts of the log's data tables (all zero when the database was never created)."""
    path = home / "docreader.db"
    tables = ("documents", "sessions", "answers", "spans")
    if not path.exists():
        return dict.fromkeys(tables, 0)
    con = sqlite3.connect(path)
    try:
        names = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
        return {t: (con.execute(f"select count(*) from {t}").fetchone()[0] if t in names else 0) for t in tables}
    finally:
        con.close()
