"""What the audit page's per-token capture (docreader.token_regions) costs: time inside the capture during
generation, and decode speed with it on and off (alternated, the document's prefix cached in memory so
only the question and the answer run), plus the bytes it stores per answer.

    python bench/audit_capture.py [DOCUMENT] [--question Q] [--tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import time

from docreader import cli_setup, token_regions
from docreader.engine import Reader
from docreader.token_regions import TokenCapture


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("document", nargs="?", default="sample_docs/cuad_limeenergy_distributor_agreement.pdf")
    ap.add_argument("--question", default="Which state's law governs this agreement?")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="as `docreader ask --threads` (default: the CLI's)")
    args = ap.parse_args()
    threads = cli_setup.use_threads(cli_setup.threads_option(args.threads))  # torch's default oversubscribes a busy CPU
    spent = {"add_s": 0.0, "calls": 0}
    real_add, real_finish = TokenCapture.add, TokenCapture.finish

    def timed_add(self, *a):
        t = time.perf_counter()
        real_add(self, *a)
        spent["add_s"] += time.perf_counter() - t
        spent["calls"] += 1

    def timed_finish(self, *a, **kw):
        t = time.perf_counter()
        out = real_finish(self, *a, **kw)
        spent["finish_s"] = time.perf_counter() - t
        return out

    TokenCapture.finish = timed_finish
    TokenCapture.add = timed_add
    reader = Reader(disk_cache=False)
    doc = reader.load(args.document)
    reader.ask(doc, args.question, max_new_tokens=args.tokens, log=False)  # reads the document once
    rows = []
    for r in range(args.rounds):
        for on in (True, False):
            TokenCapture.add = timed_add if on else (lambda self, *a: None)
            spent.update(add_s=0.0, calls=0)
            ans = reader.ask(doc, args.question, max_new_tokens=args.tokens, log=False)
            t = ans.timings
            row = {"round": r, "capture": on, "new_tokens": ans.new_tokens, "decode_s": t["decode_s"],
                   "tokens_per_s": t["tokens_per_s"], "prefill_s": t["prefill_s"]}
            if on:
                blob = token_regions.log_row(ans.token_regions)["data"]
                row |= {"capture_add_s": round(spent["add_s"], 4), "capture_calls": spent["calls"],
                        "finish_s": round(spent["finish_s"], 4), "stored_bytes": len(blob),
                        "blocks": ans.token_regions.blocks}
            rows.append(row)
            print(json.dumps(row), flush=True)
    TokenCapture.add = real_add
    on = [r for r in rows if r["capture"]]
    off = [r for r in rows if not r["capture"]]
    print(json.dumps({"document": args.document, "threads": threads, "tokens_per_s_on": sum(r["tokens_per_s"] for r in on) / len(on),
                      "tokens_per_s_off": sum(r["tokens_per_s"] for r in off) / len(off),
                      "capture_share_of_decode": sum(r["capture_add_s"] for r in on) / sum(r["decode_s"] for r in on),
                      "stored_bytes": on[-1]["stored_bytes"]}))


if __name__ == "__main__":
    main()
