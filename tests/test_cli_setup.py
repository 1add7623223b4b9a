"""What the CLI settles before a model runs: torch's thread count (--threads, DOCREADER_THREADS, the default)
and the first run's model conversion, shown on stderr (docreader.cli_setup)."""

from __future__ import annotations

import io
import os

import pytest
import torch

from conftest import db_counts
from test_cli import expect_error, run
from test_langchain_support import TINY_DSA, tiny_model_dir, write_contract
from docreader import cli_setup, engine, models

KNOBS = [a for k, v in TINY_DSA.items() for a in ("--" + k.replace("_", "-"), v)]


@pytest.fixture
def torch_threads():
    """torch's thread count put back after the test (the CLI sets it for the whole process)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny(tmp_path_factory):
    return str(tiny_model_dir(tmp_path_factory.mktemp("models")))


# -- --threads --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", ["ask", "chat"])
@pytest.mark.parametrize("args,env,reason", [
    (["--threads", "0"], None, "--threads must be a whole number from 1 to 1,024 (got 0)"),
    (["--threads", "5000"], None, "--threads must be a whole number from 1 to 1,024 (got 5000)"),
    ([], "two", "DOCREADER_THREADS must be a whole number from 1 to 1,024 (got 'two')"),
    ([], "0", "DOCREADER_THREADS must be a whole number from 1 to 1,024 (got 0)"),
])
def test_bad_thread_counts_fail_first(home, tmp_path, monkeypatch, cmd, args, env, reason):
    if env is not None:
        monkeypatch.setenv("DOCREADER_THREADS", env)
    doc = write_contract(tmp_path / "c.txt")
    extra = ["Why?"] if cmd == "ask" else []
    expect_error(cmd, doc, *extra, *args, reason=reason)
    assert db_counts(home) == {"documents": 0, "sessions": 0, "answers": 0, "spans": 0}


def test_threads_option_and_env(monkeypatch):
    monkeypatch.delenv("DOCREADER_THREADS", raising=False)
    assert cli_setup.threads_option(None) is None
    assert cli_setup.threads_option(3) == 3
    monkeypatch.setenv("DOCREADER_THREADS", " 2 ")
    assert cli_setup.threads_option(None) == 2
    assert cli_setup.threads_option(5) == 5  # the option wins


@pytest.mark.parametrize("cpus,usable,torch_default,busy,expected", [
    (2, 2, 2, 0.1, 2),   # an idle 2-core machine: both
    (2, 2, 2, 1.0, 1),   # another process keeps one core busy: one thread, none waiting on a descheduled one
    (2, 2, 2, 3.5, 1),   # overloaded: still at least one
    (8, 8, 4, 0.0, 4),   # never more than torch's default (physical cores)
    (8, 3, 8, 0.0, 3),   # nor than the CPUs this process may run on
    (8, 8, 8, 2.6, 5),
])
def test_default_threads(monkeypatch, cpus, usable, torch_default, busy, expected):
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(cli_setup, "_usable_cpus", lambda: usable)
    assert cli_setup.default_threads(torch_default, busy=busy) == expected


def test_busy_cpus_reads_the_machine():
    busy = cli_setup._busy_cpus(0.05)
    assert 0.0 <= busy <= (os.cpu_count() or 1)


def test_busy_cpus_sampled_early_leaves_out_this_process(monkeypatch):
    """The first /proc/stat read is taken when the options are read; what this process itself used before the
    second (loading the document, importing torch) does not count as busy, and no interval is slept."""
    readings = iter([(1000, 500), (1300, 600)])  # 300 ticks of 2 CPUs, 100 idle: 200 busy
    own = iter([1.0, 2.0])  # this process: 1 s of CPU = 100 ticks of those 200
    slept = []
    monkeypatch.setattr(cli_setup, "_cpu_ticks", lambda: next(readings))
    monkeypatch.setattr(cli_setup, "_own_cpu_s", lambda: next(own))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "sysconf", lambda name: 100)
    monkeypatch.setattr(cli_setup.time, "sleep", slept.append)
    cli_setup.start_busy_sample()
    monkeypatch.setattr(cli_setup.time, "monotonic", lambda: 1e9)  # long after the sample
    assert cli_setup._busy_cpus() == pytest.approx(2 * 100 / 300)
    assert slept == [0.0]


def test_served_child_starts_from_its_servers_reading(monkeypatch):
    """A forked child inherits the server's /proc/stat reading: threads_option keeps it (no new one, no sleep),
    and the child's own CPU time counts from 0."""
    readings = iter([(1300, 600)])  # the child's one read; the server's was (1000, 500)
    slept = []
    monkeypatch.setattr(cli_setup, "_cpu_ticks", lambda: next(readings))
    monkeypatch.setattr(cli_setup, "_own_cpu_s", lambda: 1.0)  # 100 ticks of this child
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "sysconf", lambda name: 100)
    monkeypatch.setattr(cli_setup.time, "sleep", slept.append)
    now = cli_setup.time.monotonic()
    cli_setup.inherit_busy_sample(now - 0.3, (1000, 500))
    cli_setup.threads_option(None)  # would take a new reading (and exhaust `readings`) if it dropped the old one
    assert cli_setup._busy_cpus() == pytest.approx(2 * 100 / 300)
    assert slept == [0.0]


def test_use_threads(monkeypatch, torch_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cli_setup.use_threads(1) == 1 == torch.get_num_threads()
    monkeypatch.setattr(cli_setup, "default_threads", lambda torch_default: 1)
    torch.set_num_threads(2)
    assert cli_setup.use_threads(None) == 1 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # chosen by whoever started us: left alone
    torch.set_num_threads(2)
    assert cli_setup.use_threads(None) == 2 == torch.get_num_threads()


@pytest.mark.parametrize("args,env,expected", [(["--threads", "1"], None, 1), ([], "1", 1), (["--threads", "2"], "1", 2)])
def test_ask_runs_the_model_with_the_threads_asked_for(home, tmp_path, monkeypatch, tiny, torch_threads,
                                                      args, env, expected):
    if env is not None:
        monkeypatch.setenv("DOCREADER_THREADS", env)
    torch.set_num_threads(3 - expected)  # something else first
    seen = []
    real = engine.generate

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(engine, "generate", spy)
    doc = write_contract(tmp_path / "c.txt")
    out = run("ask", doc, "What notice is needed?", "--model", tiny, "--max-new-tokens", "2", "--no-log", "--no-cache", *KNOBS, *args)
    assert seen == [expected]
    assert f"tok/s · {expected} thread{'s' if expected > 1 else ''}" in out.stdout  # the summary line says so


def test_chat_runs_the_model_with_the_threads_asked_for(home, tmp_path, monkeypatch, tiny, torch_threads):
    torch.set_num_threads(2)
    seen = []
    real = engine.generate
    monkeypatch.setattr(engine, "generate", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    doc = write_contract(tmp_path / "c.txt")
    run("chat", doc, "--model", tiny, "--max-new-tokens", "2", "--no-cache", "--threads", "1", *KNOBS, input="What notice?\nexit\n")
    assert seen == [1]


# -- the first run's conversion ---------------------------------------------------------------------------------

STEPS = ["[1/4] checking SmolLM2-135M-Instruct.Q4_1.gguf (98 MB)", "[2/4] reading the tokenizer",
         "[3/4] reading and dequantising the weights", "[4/4] saving safetensors"]


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_conversion_steps_are_the_status_steps():
    reported = []
    for i in range(len(models.CONVERT_STEPS)):
        models._step(reported.append, i, name="SmolLM2-135M-Instruct.Q4_1.gguf", mb=98.2)
    assert reported == STEPS


def test_conversion_status_not_a_terminal():
    out = io.StringIO()
    status = cli_setup.ConversionStatus(out)
    for s in STEPS:
        status(s)
    status.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == cli_setup.ConversionStatus.HEADER
    assert lines[1:5] == [f"  {s}" for s in STEPS]
    assert lines[5].startswith("model converted in ") and len(lines) == 6
    assert "\r" not in out.getvalue() and "#" not in out.getvalue()  # no bar in a pipe or a log


def test_conversion_status_on_a_terminal():
    out = Tty()
    status = cli_setup.ConversionStatus(out)
    status(STEPS[0])
    status(STEPS[2])
    assert out.getvalue().startswith(cli_setup.ConversionStatus.HEADER + "\n\r[")
    drawn = out.getvalue().split("\r")[-1]
    filled = round(cli_setup.ConversionStatus.WIDTH * 0.25)  # steps 1-2 done: 25% of the usual time
    assert drawn.startswith("[" + "#" * filled + "." * (cli_setup.ConversionStatus.WIDTH - filled) + "] 3/4 "
                            "reading and dequantising the weights · ")
    status.close()
    assert out.getvalue().endswith("\r\x1b[Kmodel converted in 0 s\n")


def test_no_status_when_nothing_was_converted():
    out = Tty()
    cli_setup.ConversionStatus(out).close()
    assert out.getvalue() == ""


@pytest.mark.integration
def test_first_ask_shows_the_conversion(home, irc_file, real_model_dir, monkeypatch):
    """The default model is not converted yet: `ask` converts it, saying so on stderr (not a terminal here:
    one line per step), then answers. The conversion itself is stood in for by linking the real model."""
    converted = []

    def convert(out, progress):
        for i in range(len(models.CONVERT_STEPS)):
            models._step(progress, i, name="SmolLM2-135M-Instruct.Q4_1.gguf", mb=98.2)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(real_model_dir, out, target_is_directory=True)
        converted.append(out)
        return out

    monkeypatch.setattr(models, "_convert", convert)
    result = run("ask", irc_file, "Who has a sound problem?", "--max-new-tokens", "2", "--no-log", "--no-cache", "--json")
    assert converted == [models.default_model_dir()]
    lines = result.stderr.splitlines()
    start = lines.index(cli_setup.ConversionStatus.HEADER)
    assert lines[start + 1:start + 5] == [f"  {s}" for s in STEPS]
    assert lines[start + 5].startswith("model converted in ")
    assert result.stdout.lstrip().startswith("{")  # --json's stdout stays one JSON object
