"""The document cache (docreader.doccache): what a second question costs, measured in one run.

    python -m bench.cache_speed [--book sample_docs/pride_and_prejudice.md] [--lengths 2048,8192,32768]
        [--cli FILE ...] [--question Q] [--out bench/results/cache-<date>.json]

1. Per document length (a prefix of --book): the prefill of the document (what an uncached question pays),
   writing its cache entry, loading it back (what a cached question pays instead), the entry's size per 1k
   document tokens, and whether the answer from the loaded cache is the uncached one (greedy, 8 tokens).
2. Per --cli file: `docreader ask FILE Q --max-new-tokens 1 --json` twice, each in a new process with one
   fresh $DOCREADER_HOME (the default model linked in): the first reads the document, the second starts
   from the cache. A process that generates one token measures the time to the first answer token, start-up,
   imports, model and document loading included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def in_process(book: Path, lengths: list[int], question: str) -> list[dict]:
    from docreader import doccache
    from docreader.document import Document, Region
    from docreader.engine import Reader

    text = book.read_text(encoding="utf-8")
    rows = []
    from docreader.generate import kv_dtype
    lm = Reader(disk_cache=False).lm
    tok = lm.tokenizer
    ids = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    for L in lengths:
        if L > len(ids["input_ids"]):
            print(f"skip {L}: the book has {len(ids['input_ids']):,} tokens", file=sys.stderr)
            continue
        cut = text[: ids["offset_mapping"][L - 1][1]]
        doc = Document(f"{book.name}[:{L}]", "txt", cut, [Region(0, len(cut), "page", 0, "p. 1", {"page": 1})], {})
        first = Reader().ask(doc, question, max_new_tokens=8, log=False)  # reads, answers, then writes the entry
        [entry] = [e for e in doccache.entries() if e.document == doc.path]
        second = Reader().ask(doc, question, max_new_tokens=8, log=False)  # starts from the entry
        t = second.timings
        rows.append({"document_tokens": first.document_tokens, "prompt_tokens": first.prompt_tokens,
                     "prefill_s": first.timings["prefill_s"], "write_s": first.timings["cache_save_s"],
                     "load_s": t["cache_load_s"], "prefill_after_cache_s": t["prefill_s"],
                     "speedup": round(first.timings["prefill_s"] / max(t["cache_load_s"] + t["prefill_s"], 1e-9), 1),
                     "entry_mb": round(entry.bytes / 2**20, 1),
                     "mb_per_1k_tokens": round(entry.bytes / 2**20 / (entry.tokens / 1000), 2),
                     "source": t["prefix_cache"], "same_answer": second.text == first.text,
                     "kv_dtype": str(kv_dtype(lm.model, first.prompt_tokens + 8) or next(lm.model.parameters()).dtype).removeprefix("torch.")})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        doccache.clear()
    return rows


def link_model(home: str, real: Path) -> str:
    """A fresh $DOCREADER_HOME with the installed default model linked in (no conversion, no cache)."""
    (Path(home) / "models").mkdir(parents=True, exist_ok=True)
    os.symlink(real, Path(home) / "models" / real.name, target_is_directory=True)
    return home


def cli_runs(files: list[str], question: str, real: Path) -> list[dict]:
    rows = []
    for f in files:
        with tempfile.TemporaryDirectory() as home:
            env = {**os.environ, "DOCREADER_HOME": link_model(home, real)}
            row = {"file": f}
            for run in ("first", "second"):
                t0 = time.perf_counter()
                p = subprocess.run([str(Path(sys.executable).with_name("docreader")), "ask", f, question, "--max-new-tokens", "1",
                                    "--json"], env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if p.returncode:
                    raise SystemExit(f"{f}: {p.stderr.strip()[-300:]}")
                out = json.loads(p.stdout)
                t = out["timings"]
                row[run] = {"wall_s": round(wall, 2), "load_s": t["load_s"], "prefill_s": t["prefill_s"],
                            "cache": t["prefix_cache"], "cache_load_s": t["cache_load_s"],
                            "cache_save_s": t["cache_save_s"], "prompt_tokens": out["tokens"]["prompt"]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--book", default=str(ROOT / "sample_docs" / "pride_and_prejudice.md"))
    ap.add_argument("--lengths", default="2048,4096,8192,16384,32768")
    ap.add_argument("--cli", nargs="*", default=[str(ROOT / "sample_docs" / "cuad_limeenergy_distributor_agreement.pdf")])
    ap.add_argument("--question", default="Which state's law governs this agreement?")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    from docreader import models
    real = models.install_default(progress=lambda m: None)  # in the user's home: converted once
    os.environ["DOCREADER_HOME"] = link_model(tempfile.mkdtemp(prefix="docreader-cache-bench-"), real)
    lengths = [int(x) for x in a.lengths.split(",") if x]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cli = cli_runs(a.cli, a.question, real) if a.cli else []
    rows = in_process(Path(a.book), lengths, "Who is the main character?") if lengths else []
    print(f"### Document cache, {started} ({os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')})\n")
    if rows:
        print("| document tokens | prefill s (uncached) | write s | load s | prefill after load s | speedup | entry MB | MB / 1k tokens | same answer |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['document_tokens']:,} | {r['prefill_s']:.2f} | {r['write_s']:.2f} | {r['load_s']:.2f} | "
                  f"{r['prefill_after_cache_s']:.2f} | {r['speedup']}× | {r['entry_mb']} | {r['mb_per_1k_tokens']} | "
                  f"{'yes' if r['same_answer'] else 'NO'} |")
    for r in cli:
        f, s = r["first"], r["second"]
        print(f"\n`docreader ask {Path(r['file']).name} … --max-new-tokens 1`, new process each: first {f['wall_s']:.1f} s "
              f"(prefill {f['prefill_s']:.1f} s, cache written in {f['cache_save_s']:.1f} s), second {s['wall_s']:.1f} s "
              f"(cache {s['cache']}, loaded in {s['cache_load_s']:.2f} s, model load {s['load_s']:.1f} s, "
              f"{s['prompt_tokens']:,} prompt tokens)")
    out = Path(a.out or ROOT / "bench" / "results" / f"cache-{time.strftime('%Y%m%d-%H%M')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": started, "lengths": rows, "cli": cli, "argv": argv or sys.argv[1:]}, indent=1))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
