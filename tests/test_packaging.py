"""docreader as a package: the prompt templates ship inside it, a built wheel installed into a fresh venv
answers a question (tests/wheel_smoke.sh), `docreader --version`."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

import docreader
from docreader import cli_setup
from docreader.cli import app
from docreader.langchain.prompts import names
from docreader.prompt import PROMPTS, template

ROOT = Path(__file__).resolve().parent.parent


def test_prompt_templates_are_package_data():
    """The templates docreader reads at run time live in the package and are declared as its package data:
    a wheel carries them (outside the package, a built wheel failed on the first question)."""
    package = Path(docreader.__file__).resolve().parent
    assert PROMPTS.resolve().parent == package, PROMPTS
    files = sorted(PROMPTS.glob("*.txt"))
    assert [f.stem for f in files] == names() and {"system", "ask", "followup"} <= set(names())
    assert all(template(n) for n in names())
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["docreader"]
    for f in files:
        rel = f.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), (rel, patterns)
    top = ROOT / "prompts"  # kept for bench/ scripts that read it: a link, never a second copy
    assert not top.exists() or (top.is_symlink() and top.resolve() == PROMPTS.resolve())


@pytest.mark.integration
def test_wheel_installs_and_answers(real_model_dir):
    """Build the wheel, install it (no deps, no network) into a fresh venv and run one `docreader ask` from
    outside the repository with the wheel's own files."""
    proc = subprocess.run(["bash", str(ROOT / "tests" / "wheel_smoke.sh"), sys.executable],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "wheel_smoke: ok" in proc.stderr


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"docreader {metadata.version('docreader')}\n"
    assert metadata.version("docreader") == docreader.__version__  # pyproject reads it from the package


def test_version_without_installed_metadata(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert cli_setup.version() == docreader.__version__
    assert CliRunner().invoke(app, ["--version"]).stdout == f"docreader {docreader.__version__}\n"
