"""`docreader batch --engine ray` against a Ray instance on 127.0.0.1 that the test starts (`ray start --head`,
in its own process group) and stops after: 2 actors over a handful of small documents give the same rows as the
local engine, and a document that cannot be loaded is one error row.

Cost (2-core CI machine, 2026-12-04): Ray's head starts in ~10 s and two actors load the tiny model in a few
seconds; the test takes ~40 s. Ray and pyarrow add ~420 MB to the venv (`pip install 'docreader[ray,parquet]'`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_batch import CONTRACT, QUESTIONS
from test_langchain_support import tiny_model_dir
from docreader import batch_io
from docreader.cli import app

ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install 'docreader[ray]')")
pytestmark = pytest.mark.ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A one-node Ray cluster on 127.0.0.1 with 2 CPUs; -> its address. Stopped by signalling its process group."""
    port = _free_port()
    ray_bin = Path(sys.executable).parent / "ray"
    log = open(tmp_path / "ray-head.log", "w")
    proc = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
                             "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while "ray status" not in (tmp_path / "ray-head.log").read_text(errors="replace"):
            assert proc.poll() is None, (tmp_path / "ray-head.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "the Ray head did not start in 120 s"
            time.sleep(0.5)
        yield address
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 15)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def _batch(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


SAME = ("document", "question_no", "question", "answer", "short_answer", "quote", "quotes", "document_sha256",
        "prompt_tokens", "new_tokens", "model", "error")


def test_ray_engine_gives_the_local_rows(ray_head, model_home, tmp_path):
    model = tiny_model_dir(tmp_path)
    docs = []
    for i in range(3):
        p = tmp_path / f"contract{i}.txt"
        p.write_text(CONTRACT.replace("three", ["two", "three", "five"][i]))
        docs.append(p)
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 cut short")
    common = [*docs, broken, "-q", QUESTIONS[0], "-q", QUESTIONS[1], "-n", "4", "--threads", "1", "--model", model]
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert _batch("batch", *common, "--out", local).exit_code == 2
    r = _batch("batch", *common, "--out", remote, "--engine", "ray", "--address", ray_head, "--workers", "2")
    assert r.exit_code == 2, r.output
    by_key = lambda rows: {(x["document"], x["question"]): x for x in rows}  # noqa: E731 - any order
    a, b = by_key(batch_io.read_rows(local, "jsonl")), by_key(batch_io.read_rows(remote, "jsonl"))
    assert len(a) == len(b) == 7 and a.keys() == b.keys()
    for k in a:
        assert {f: a[k][f] for f in SAME} == {f: b[k][f] for f in SAME}, k
    assert b[(str(broken), None)]["error"].startswith("truncated PDF")
    workers = {x["worker"] for x in b.values()}
    assert {w.split("@")[0] for w in workers} == {"ray-0", "ray-1"}  # both actors took documents
