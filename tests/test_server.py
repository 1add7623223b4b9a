"""`docreader serve`: a command served by the warm server prints what a fresh process prints, exits with its
exit code, and a server that runs other code or settings is not used (the command runs on its own)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from docreader import server

CLI = server.CLI
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """A copy of docreader/ and dsa/ (shipped weights linked): the code stamp of a checkout others are editing
    would change under a running server, which then rightly serves nobody."""
    src = tmp_path_factory.mktemp("src")
    skip = shutil.ignore_patterns("__pycache__", "weights")
    for pkg in ("docreader", "dsa"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=skip)
    os.symlink(ROOT / "dsa" / "weights", src / "dsa" / "weights", target_is_directory=True)
    return src


def run_cli(args: list[str], cwd: Path, src: Path, **env: str) -> subprocess.CompletedProcess:
    """A new `docreader` process (the entry point, as a user runs it) on the code in `src`, from `cwd`."""
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(src), **env}, timeout=300)


@pytest.fixture
def served(model_home, tmp_path, snapshot):
    """A `docreader serve` on model_home, started the way the clients below start (same cwd and sys.path)."""
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", CLI, "serve", "--idle", "5"], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(snapshot)})
    try:
        deadline = time.monotonic() + 240
        while "ready" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "ready" in log.read_text(), log.read_text()
        yield log
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not server.socket_path().exists()  # a stopped server removes its socket


def _answer(stdout: str) -> dict:
    out = json.loads(stdout)
    out.pop("timings")
    return out


def test_served_ask_prints_what_a_fresh_process_prints(served, irc_file, tmp_path, snapshot):
    args = ["ask", irc_file.name, "Who fixed the sound problem?", "--max-new-tokens", "4", "--json", "--no-log",
            "--no-cache",
            "--threads", "1"]
    assert irc_file.parent == tmp_path  # a relative path: the child must work in the client's directory
    fresh = run_cli(args, tmp_path, snapshot, DOCREADER_SERVE="off")
    assert fresh.returncode == 0, fresh.stderr
    assert "docreader serve: ask" not in served.read_text()
    got = run_cli(args, tmp_path, snapshot)
    assert got.returncode == 0, got.stderr
    assert "docreader serve: ask" in served.read_text() and "exited 0" in served.read_text(), got.stderr
    assert _answer(got.stdout) == _answer(fresh.stdout)
    assert "not using" not in got.stderr

    bad = run_cli(["ask", "missing.pdf", "Q?"], tmp_path, snapshot)  # the child's error and exit code reach the client
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error:") and "missing.pdf" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert "exited 1" in served.read_text()


def test_a_server_with_other_settings_is_not_used(served, irc_file, tmp_path, snapshot):
    got = run_cli(["ask", irc_file.name, "Who?", "--max-new-tokens", "1", "--no-log", "--no-cache"], tmp_path, snapshot,
                  DOCREADER_PREFILL_CHUNK="4096")
    assert got.returncode == 0, got.stderr
    assert "not using `docreader serve` (it was started with other settings: DOCREADER_PREFILL_CHUNK)" in got.stderr
    assert "docreader serve: ask" not in served.read_text()


def test_refusals(home, monkeypatch):
    s = server.Server()
    ok = {"argv": ["ask", "f.txt", "q"], "stamp": s.stamp, "env": dict(os.environ)}
    assert s._refuse(ok, os.getuid(), [0, 1, 2]) is None
    assert "another user" in s._refuse(ok, os.getuid() + 1, [0, 1, 2])
    assert "stdin" in s._refuse(ok, os.getuid(), [0])
    assert "serves only" in s._refuse({**ok, "argv": ["log"]}, os.getuid(), [0, 1, 2])
    assert "other code" in s._refuse({**ok, "stamp": "x"}, os.getuid(), [0, 1, 2])
    assert "OMP_NUM_THREADS" in s._refuse({**ok, "env": {**os.environ, "OMP_NUM_THREADS": "7"}}, os.getuid(),
                                          [0, 1, 2])
    assert s._refuse({**ok, "env": {**os.environ, "COLUMNS": "7"}}, os.getuid(), [0, 1, 2]) is None


def test_code_stamp_follows_the_code(home, monkeypatch, tmp_path):
    """An edited docreader file makes a running server stale (its stamp no longer matches the client's)."""
    before = server.code_stamp()
    assert server.code_stamp() == before
    target = Path(server.__file__)
    st = target.stat()
    try:
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
        assert server.code_stamp() != before
    finally:
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_no_server_runs_the_command_here(home, monkeypatch):
    assert server.forward(["ask", "x.pdf", "q"]) is None  # no socket
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(server.socket_path()))  # a socket file nobody listens on (a killed server's)
    dead.close()
    assert server.forward(["ask", "x.pdf", "q"]) is None
    assert server.forward(["log"]) is None  # not a served command
    monkeypatch.setenv("DOCREADER_SERVE", "off")
    assert server.forward(["ask", "x.pdf", "q"]) is None


def test_keep_alive_only_for_a_person_at_a_terminal(home, monkeypatch):
    """An answered ask/chat leaves a server behind when stdout is a terminal or DOCREADER_SERVE=auto; never for a
    pipeline, another command, a served child, DOCREADER_SERVE=off or DOCREADER_KEEP_ALIVE=0."""
    for var in ("DOCREADER_SERVE", "DOCREADER_KEEP_ALIVE", "DOCREADER_SERVED_CHILD"):
        monkeypatch.delenv(var, raising=False)
    tty = {"v": False}
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty["v"])
    assert not server.keep_alive_wanted(["ask", "f.pdf", "q"])  # stdout a pipe (this test's)
    tty["v"] = True
    assert server.keep_alive_wanted(["ask", "f.pdf", "q"]) and server.keep_alive_wanted(["chat", "f.pdf"])
    assert not server.keep_alive_wanted(["log"]) and not server.keep_alive_wanted([])
    monkeypatch.setenv("DOCREADER_KEEP_ALIVE", "0")
    assert not server.keep_alive_wanted(["ask", "f.pdf", "q"])
    monkeypatch.setenv("DOCREADER_KEEP_ALIVE", "soon")
    assert not server.keep_alive_wanted(["ask", "f.pdf", "q"])
    monkeypatch.delenv("DOCREADER_KEEP_ALIVE")
    monkeypatch.setenv("DOCREADER_SERVE", "off")
    assert not server.keep_alive_wanted(["ask", "f.pdf", "q"])
    tty["v"] = False
    monkeypatch.setenv("DOCREADER_SERVE", "auto")
    assert server.keep_alive_wanted(["ask", "f.pdf", "q"])
    monkeypatch.setenv("DOCREADER_SERVED_CHILD", "1")
    assert not server.keep_alive_wanted(["ask", "f.pdf", "q"])


def test_an_answered_ask_leaves_a_server_for_the_next(model_home, irc_file, tmp_path, snapshot):
    """`ask` (DOCREADER_SERVE=auto standing in for a terminal) answers, then leaves a detached server that takes
    the next ask; a failed ask leaves none."""
    args = ["ask", irc_file.name, "Who fixed the sound problem?", "--max-new-tokens", "2", "--json", "--no-log",
            "--no-cache"]
    bad = run_cli(["ask", "missing.pdf", "q"], tmp_path, snapshot, DOCREADER_SERVE="auto")
    assert bad.returncode != 0 and "stays loaded" not in bad.stderr
    first = run_cli(args, tmp_path, snapshot, DOCREADER_SERVE="auto", DOCREADER_KEEP_ALIVE="2")
    try:
        assert first.returncode == 0, first.stderr
        assert "the model stays loaded for 2 min" in first.stderr
        deadline = time.monotonic() + 240
        while not server.socket_path().exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.socket_path().exists()  # listening (it warms up first)
        second = run_cli(args, tmp_path, snapshot)  # neither variable is a setting the server must match
        assert second.returncode == 0, second.stderr
        assert _answer(second.stdout) == _answer(first.stdout)  # the same answer
        log = server.home() / server.LOG_NAME
        deadline = time.monotonic() + 30  # the server logs a child once it has reaped it
        while "docreader serve: ask" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "docreader serve: ask" in log.read_text(), (log.read_text(), second.stderr)  # taken by the server
    finally:
        assert server.stop()  # it was running
    assert not server.socket_path().exists()
