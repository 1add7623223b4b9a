"""Time to the first answer token of a `docreader` command, in new processes: the first byte on stdout, timed
from the spawn (what a user waits for), and the whole run.

    python -m bench.first_token [--runs 5] [--python .venv/bin/python] -- ask FILE -q "Q" -n 8

Runs the `docreader` entry point installed beside --python (else `python -c <docreader's CLI>`) ARGS --runs times (after one warm-up run that is not counted unless
--no-warmup) in the current directory, with the current environment ($DOCREADER_HOME decides which document
cache and which `docreader serve` it meets), and prints each run and the median, min and max as JSON lines.
A run that exits non-zero stops the bench. The entry point is what users run, and `docreader serve` accepts
only callers running its own interpreter and code, so a `python -c` caller would skip a running server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from docreader.server import CLI  # the same -c program the server's keep-alive spawns


def one_run(python: str, args: list[str]) -> dict:
    """Spawn the CLI once; -> first_token_s (first stdout byte), total_s, rc, the first bytes seen."""
    t0 = time.perf_counter()
    script = os.path.join(os.path.dirname(python), "docreader")
    cmd = [script] if os.access(script, os.X_OK) else [python, "-c", CLI]
    proc = subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = os.read(proc.stdout.fileno(), 1)  # unbuffered: communicate() reads the rest from the fd
    t_first = time.perf_counter() - t0
    rest, err = proc.communicate()
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"exit {proc.returncode}: {err.decode(errors='replace').strip()[-400:]}")
    return {"first_token_s": round(t_first, 3), "total_s": round(total, 3),
            "first_bytes": (first + rest)[:40].decode(errors="replace")}


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values), "n": len(values)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("args", nargs="+", help="docreader's arguments (after --)")
    a = ap.parse_args(argv)
    if not a.no_warmup:
        one_run(a.python, a.args)
    runs = []
    for i in range(a.runs):
        r = one_run(a.python, a.args)
        runs.append(r)
        print(json.dumps({"run": i + 1, **r}, ensure_ascii=False), flush=True)
    print(json.dumps({"command": ["docreader", *a.args], "cwd": os.getcwd(),
                      "first_token_s": summary([r["first_token_s"] for r in runs]),
                      "total_s": summary([r["total_s"] for r in runs])}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
