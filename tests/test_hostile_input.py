"""Hostile input (issue 15): tiny files that hung, blew up memory, raised tracebacks or ran code in a load.

Every file is generated at test time (tests/hostile.py). Each load runs in a subprocess under a 3 GB
address-space limit, isolated (-I) so nothing in the current directory is imported; the subprocess
timeout is only a hang guard, the load must stop on the loader's own limits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hostile
from docreader.errors import DocreaderError
from docreader.loaders import load

ROOT = Path(__file__).resolve().parent.parent
MEMORY = 3 << 30
HANG_GUARD_S = float(os.environ.get("HOSTILE_HANG_GUARD_S", 120))  # lower it to check the old code quickly

_LOAD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))
sys.path[:0] = [{root!r}]
from docreader.errors import DocreaderError
from docreader.loaders import load
try:
    doc = load(sys.argv[1], **json.loads(sys.argv[2]))
    print(json.dumps({{"ok": True, "chars": len(doc.text), "meta": doc.meta}}))
except DocreaderError as e:
    print(json.dumps({{"error": str(e), "path": e.path}}))
"""

_CLI = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))
sys.path[:0] = [{root!r}]
from docreader.cli import app
app(["ask", sys.argv[1], "What is it about?"])
"""


def _python(code: str, *args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-c", code.format(mem=MEMORY, root=str(ROOT)), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=HANG_GUARD_S, env={**os.environ, **(env or {})})


def load_isolated(path: Path, cwd: Path | None = None, env: dict | None = None, **kw) -> dict:
    """load(path, **kw) in a fresh, memory-capped interpreter: {"ok", "chars", "meta"} or {"error", "path"}."""
    proc = _python(_LOAD, str(path), json.dumps(kw), cwd=cwd, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def expect_refused(path: Path, reason: str, env: dict | None = None, **kw) -> str:
    """The load fails with one line naming the file and `reason`; the CLI says the same in one line, exit 1."""
    out = load_isolated(path, env=env, **kw)
    assert "error" in out, out
    message = out["error"]
    assert out["path"] == str(path) and message.startswith(f"{path}: ") and reason in message, message
    assert "\n" not in message
    if not kw:
        cli = _python(_CLI, str(path), env={"DOCREADER_HOME": str(path.parent / "home"), **(env or {})})
        assert cli.returncode == 1 and cli.stdout == "", (cli.returncode, cli.stderr[-2000:])
        assert cli.stderr == f"error: {message}\n", cli.stderr[-2000:]
    return message


# -- hangs and blow-ups from tiny files ----------------------------------------------------------------

@pytest.mark.parametrize("format", [None, "txt"])
def test_html_sniffing_is_linear(tmp_path, format):
    out = load_isolated(hostile.redos_text(tmp_path), **({"format": format} if format else {}))
    assert out.get("ok") and out["chars"] == 281


def test_epub_spine_repeating_one_chapter(tmp_path):
    message = expect_refused(hostile.epub_repeated_spine(tmp_path), "too long: the text passes 2,097,152 characters")
    assert "262,144-token model window (DOCREADER_MAX_TOKENS)" in message


def test_pdf_form_drawn_5000_times(tmp_path):
    expect_refused(hostile.pdf_xobject_repeated(tmp_path), "page 1 has over 4 MB of drawing instructions")


def test_pdf_pages_sharing_one_huge_stream(tmp_path):
    expect_refused(hostile.pdf_shared_content(tmp_path, pages=20, mb=12), "page 1 has over 4 MB of drawing")
    small = hostile.pdf_shared_content(tmp_path, pages=40, mb=1)  # 1 MB a page: fine alone, 40 MB in all
    expect_refused(small, "pages 1–33 have over 32 MB of drawing instructions")


def test_markdown_too_long_for_the_window_is_refused_unread(tmp_path):
    message = expect_refused(hostile.big_markdown(tmp_path), "too long: 49.0 MB of text is ~12,250,004 tokens")
    assert "more than the 262,144-token model window (DOCREADER_MAX_TOKENS)" in message
    assert "8,000-token" in expect_refused(hostile.big_markdown(tmp_path, mb=1), "too long",
                                           env={"DOCREADER_MAX_TOKENS": "8000"})


def test_nul_after_the_first_64_kib(tmp_path):
    expect_refused(hostile.late_nul_text(tmp_path), "not a supported document (binary data)")


def test_wall_time_budget(tmp_path):
    """A budget of 1 s already spent: the load stops between pages with the limit in the message."""
    from docreader.loaders.budget import Budget
    budget = Budget(str(tmp_path / "x.pdf"), seconds=1, started=0)
    with pytest.raises(DocreaderError, match=r"x.pdf: loading took over the 1 s limit \(extracting page 1\) "
                                             r"\(DOCREADER_LOAD_SECONDS\)"):
        budget.check_time("extracting page 1")


# -- tracebacks from loaders ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["runs", "sdt"])
def test_docx_nested_5000_deep(tmp_path, kind):
    out = load_isolated(hostile.docx_deep(tmp_path, kind))
    assert out.get("ok") and out["chars"] == 4


def test_json_chat_with_lone_surrogate(tmp_path):
    doc = load(hostile.chat_surrogate(tmp_path))
    assert "hi \ufffd there" in doc.text and doc.meta["speakers"] == ["al\ufffdice", "bob"]
    doc.text.encode("utf-8")  # what a tokenizer needs


def test_deeply_nested_json_is_not_called_invalid(tmp_path):
    message = expect_refused(hostile.deep_json(tmp_path), "JSON chat export nested too deeply", format="chat")
    assert "invalid" not in message


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-5", "12.5", "lots"])
def test_max_bytes_env_that_is_not_a_size(tmp_path, monkeypatch, value):
    path = tmp_path / "a.txt"
    path.write_text("hello")
    monkeypatch.setenv("DOCREADER_MAX_BYTES", value)
    with pytest.raises(DocreaderError, match=r"^DOCREADER_MAX_BYTES must be a number of bytes \(a positive whole "
                                             rf"number\), got '{value}'$"):
        load(path)
    monkeypatch.setenv("DOCREADER_MAX_BYTES", "5e7")
    assert load(path).text == "hello"


# -- smuggling ---------------------------------------------------------------------------------------------

def test_pdf_workers_do_not_import_from_the_current_directory(tmp_path):
    marker = tmp_path / "ran.txt"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    hostile.evil_json_module(cwd, marker)
    pdf = hostile.many_page_pdf(cwd, pages=50)
    out = load_isolated(pdf, cwd=cwd, env={"DOCREADER_PDF_WORKERS": "2"})
    assert out.get("ok") and out["meta"]["pages"] == 50
    assert not marker.exists()


# -- smaller -----------------------------------------------------------------------------------------------

def test_undecodable_pdf_page_is_warned_about_and_recorded(tmp_path, caplog):
    path = hostile.pdf_undecodable_page(tmp_path)
    doc = load(path)
    assert doc.meta["undecodable_pages"] == [2] and "[this page could not be decoded]" in doc.text
    assert [r.getMessage() for r in caplog.records] == [
        f"warning: {path}: could not decode page 2; its text is missing"]


def test_docx_entity_after_64_kib(tmp_path):
    expect_refused(hostile.docx_late_entity(tmp_path), "word/document.xml declares XML entities — refusing to expand")


def test_proc_file_is_read_not_called_empty():
    doc = load("/proc/self/status")
    assert "Name:" in doc.text


def test_newline_in_file_name_stays_one_line(tmp_path):
    path = tmp_path / "contract\nerror: all good\x1b]0;title\x07.txt"
    path.write_bytes(b"\x00\x01binary" * 10)
    with pytest.raises(DocreaderError) as info:
        load(path)
    assert info.value.path == str(path)
    escaped = f"{tmp_path}/contract\\nerror: all good\\x1b]0;title\\x07.txt"
    assert str(info.value) == f"{escaped}: not a supported document (binary data)"
    cli = _python(_CLI, str(path), env={"DOCREADER_HOME": str(tmp_path / "home")})
    assert cli.returncode == 1 and cli.stderr == f"error: {info.value}\n"
