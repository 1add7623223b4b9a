"""What the CLI settles before a model runs: `--version`, torch's thread count (`--threads`,
DOCREADER_THREADS) and the first run's model conversion, shown on stderr.

Nothing here imports torch until a thread count is applied, after the input has been checked.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time

from . import models as models_mod
from .errors import DocreaderError

THREADS_ENV = "DOCREADER_THREADS"
MAX_THREADS = 1024


# -- --version ------------------------------------------------------------------------------------------------

def version() -> str:
    """The installed distribution's version; the package's own `__version__` when it is not installed (a
    checkout on sys.path)."""
    from importlib import metadata
    try:
        return metadata.version("docreader")
    except metadata.PackageNotFoundError:
        from . import __version__
        return __version__


# -- --threads ------------------------------------------------------------------------------------------------

def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - no affinity on this platform
        return os.cpu_count() or 1


def _cpu_ticks() -> tuple[int, int]:
    """(all, idle) CPU time of the machine since boot, in clock ticks, from /proc/stat's first line."""
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks[:8]), idle  # user nice system idle iowait irq softirq steal (guest is in user)


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


_sample: tuple[float, float, int, int] | None = None  # (wall, own CPU s, all ticks, idle ticks) from start_busy_sample


def start_busy_sample(keep_recent: float = 0.0) -> None:
    """Take the first /proc/stat reading now (ask/chat do it before loading the document and torch), so that
    `_busy_cpus` need not sleep for its interval: what this process itself used meanwhile is subtracted.
    keep_recent: keep a reading already taken (a served child inherits its server's) if younger than that."""
    global _sample
    if _sample is not None and time.monotonic() - _sample[0] < keep_recent:
        return
    try:
        _sample = (time.monotonic(), _own_cpu_s(), *_cpu_ticks())
    except (OSError, ValueError, IndexError):
        _sample = None


def cpu_reading() -> tuple[int, int]:
    """(all, idle) ticks now: what a server keeps so that its forked children need not wait for a first reading."""
    return _cpu_ticks()


def inherit_busy_sample(wall: float, ticks: tuple[int, int]) -> None:
    """Start the busy-CPU interval from a reading taken at `wall` (time.monotonic) by the process this one was
    forked from: a forked child's own CPU time starts at 0."""
    global _sample
    _sample = (wall, 0.0, *ticks)


def _busy_cpus(interval: float = 0.2) -> float:
    """How many CPUs the machine's other processes keep busy now, from two reads of /proc/stat at least
    `interval` seconds apart (this process's own CPU time between them subtracted); 0 where there is no
    /proc/stat. The first read is start_busy_sample's when there was one (then usually no wait at all)."""
    global _sample
    try:
        if _sample is None:
            start_busy_sample()
        if _sample is None:
            return 0.0
        wall0, own0, total0, idle0 = _sample
        _sample = None
        time.sleep(max(0.0, interval - (time.monotonic() - wall0)))
        total1, idle1 = _cpu_ticks()
        own = (_own_cpu_s() - own0) * os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
    if total1 <= total0:
        return 0.0
    busy = max(0.0, (total1 - total0) - (idle1 - idle0) - own)
    return (os.cpu_count() or 1) * busy / (total1 - total0)


def default_threads(torch_default: int, busy: float | None = None) -> int:
    """torch's own default (one thread per physical core), capped at the CPUs this process may use and at the
    ones not busy with other work right now, at least 1. torch's threads wait for each other at every op, so
    one that is descheduled stalls them all: on a busy 2-core machine a follow-up question took 38 s with
    torch's 2 threads and 1.5 s with one."""
    busy = _busy_cpus() if busy is None else busy
    free = round((os.cpu_count() or 1) - busy)
    return max(1, min(torch_default, _usable_cpus(), free))


def threads_option(value: int | None) -> int | None:
    """--threads, else $DOCREADER_THREADS, checked before anything loads; None: the default."""
    start_busy_sample(keep_recent=1.0)  # the default's interval then spans the document's load and torch's import
    source = "--threads"
    if value is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        if not raw:
            return None
        source = THREADS_ENV
        if not raw.isdigit():
            raise DocreaderError(f"{THREADS_ENV} must be a whole number from 1 to {MAX_THREADS:,} (got {raw!r})")
        value = int(raw)
    if not 1 <= value <= MAX_THREADS:
        raise DocreaderError(f"{source} must be a whole number from 1 to {MAX_THREADS:,} (got {value})")
    return value


def use_threads(value: int | None) -> int:
    """Set torch's thread count before the model runs: `value`, or (None) the default, unless
    OMP_NUM_THREADS already chose one. -> the count torch uses."""
    import torch
    if value is None:
        if os.environ.get("OMP_NUM_THREADS", "").strip():
            return torch.get_num_threads()
        value = default_threads(torch.get_num_threads())
    torch.set_num_threads(value)
    return torch.get_num_threads()


# -- the first run's model conversion -------------------------------------------------------------------------

_STEP = re.compile(r"\[(\d+)/(\d+)\] (.*)")


class ConversionStatus:
    """A `progress` callback for models.install_default, on stderr. First one line saying what happens; then on
    a terminal one line redrawn every half second: a bar of the steps done (each weighted by the time it
    usually takes), the current step and the seconds so far. Elsewhere (a pipe, a CI log) each step is a line
    of its own, no bar. `close()` ends it with the time it took."""

    WIDTH = 24
    HEADER = "converting the model once (~1 min); later runs load it in about a second"

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started: float | None = None
        self.step, self.steps, self.text = 0, len(models_mod.CONVERT_STEPS), ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __call__(self, message: str) -> None:
        with self._lock:
            if self.started is None:
                self.started = time.monotonic()
                self.stream.write(self.HEADER + "\n")
            m = _STEP.fullmatch(message)
            self.step, self.steps, self.text = (int(m[1]), int(m[2]), m[3]) if m else (self.step, self.steps, message)
            if self.tty:
                self._draw()
            else:
                self.stream.write(f"  {message}\n")
            self.stream.flush()
        if self.tty and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def _share_done(self) -> float:
        shares = [share for _, share in models_mod.CONVERT_STEPS]
        if self.steps != len(shares):  # not the steps we know: count them
            return max(0, self.step - 1) / max(1, self.steps)
        return sum(shares[:max(0, self.step - 1)]) / sum(shares)

    def _draw(self) -> None:
        fill = round(self.WIDTH * self._share_done())
        elapsed = time.monotonic() - self.started
        self.stream.write(f"\r[{'#' * fill}{'.' * (self.WIDTH - fill)}] {self.step}/{self.steps} {self.text} "
                          f"· {elapsed:.0f} s\x1b[K")

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                self._draw()
                self.stream.flush()

    def close(self, ok: bool = True) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self.started is None:  # nothing was converted
            return
        with self._lock:
            if self.tty:
                self.stream.write("\r\x1b[K")
            if ok:
                self.stream.write(f"model converted in {time.monotonic() - self.started:.0f} s\n")
            self.stream.flush()


def ensure_default_model(spec: str | None, stream=None) -> None:
    """The default model converted before a question runs, its progress on stderr (the engine would do it
    silently). Any other model, or one already converted: nothing happens."""
    if spec not in models_mod.DEFAULT_SPECS or models_mod._installed(models_mod.default_model_dir()):
        return
    install(stream=stream)


def install(stream=None, allow_download: bool = False):
    """models.install_default with a ConversionStatus; -> the model's directory."""
    status = ConversionStatus(stream)
    try:
        path = models_mod.install_default(progress=status, allow_download=allow_download)
    except BaseException:
        status.close(ok=False)
        raise
    status.close()
    return path
