"""Where a long prefill's time goes: attention vs the rest of the model (Amdahl's bound for sparse attention).

    python -m bench.prefill_split sample_docs/pride_and_prejudice.md --tokens 32768 --mode dense
    python -m bench.prefill_split sample_docs/pride_and_prejudice.md --tokens 32768 --mode sparse

The default model with DSA attached runs one prefill with DSA's phase timer on. In `dense` mode every layer
attends with SDPA (the indexer still runs, timed apart), so total - attention - indexer is the work attention
cannot remove (projections, MLPs, norms): dense / that is the most any sparse attention could speed prefill up.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import dsa
from bench.document import document_ids
from dsa.longctx import set_context


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("document", help="a UTF-8 text file")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--mode", choices=["dense", "sparse"], default="dense")
    ap.add_argument("--chunk", type=int, default=None,
                    help="prefill this many tokens per forward into one cache, as docreader does (default: one forward)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from docreader import models
    lm = models.load(None, dtype="float32")
    model = lm.model
    ids = document_ids(args.document, lm.tokenizer)[None, : args.tokens]
    L = ids.shape[1]
    set_context(model, L + 1)
    dsa.set_mode(model, args.mode)
    with torch.inference_mode(), dsa.profiling(model) as ph:
        t = time.perf_counter()
        cache = dsa.new_cache(model, capacity=L)
        step = args.chunk or L
        for start in range(0, L, step):
            model(ids[:, start : start + step], **dsa.cache_arg(cache), use_cache=True, logits_to_keep=1)
        total = time.perf_counter() - t
    phases = {k: round(ph.get(k, 0.0), 1) for k in ("indexer", "selection", "attention")}
    rest = total - sum(phases.values())
    row = {"tokens": L, "chunk": args.chunk or L, "mode": args.mode, "matmul": lm.matmul,
           "threads": torch.get_num_threads(), "total_s": round(total, 1),
           **{f"{k}_s": v for k, v in phases.items()}, "rest_s": round(rest, 1)}
    print(json.dumps(row))
    print(f"{L:,} tokens, {args.mode}, {lm.matmul} linears: {total:.1f} s = indexer {phases['indexer']} "
          f"+ selection {phases['selection']} + attention {phases['attention']} + the rest of the model {rest:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
