"""What bf16 linear layers (dsa.bf16_linear, `DOCREADER_MATMUL=bfloat16`) cost in quality and buy in speed.

    python -m bench.matmul_dtype --windows 8 --length 2048 --json bench/matmul_dtype.json

The default model (its delta and indexer, sparse mode) loaded twice in one process, with float32 and with bf16
linear layers; on the same windows of held-out books (bench.eval_data.held_out: never trained on): the mean
next-token NLL (perplexity) of each, how often their top-1 predictions agree, and the seconds each forward took.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.eval_long import DEFAULT_BOOKS, held_out_books
from dsa.longctx import set_context


def windows(books: list[dict], tokenizer, n: int, length: int) -> list[torch.Tensor]:
    """The first `length` tokens of each of the first `n` held-out books long enough to give them."""
    out = []
    for b in books:
        ids = tokenizer(b["text"][: length * 8])["input_ids"][:length]
        if len(ids) == length:
            out.append(torch.tensor([ids]))
        if len(out) == n:
            break
    return out


def run(dtype: str, wins: list[torch.Tensor]) -> dict:
    """One forward per window with the model loaded under DOCREADER_MATMUL=dtype: NLL, seconds, top-1 ids."""
    from docreader import models
    os.environ[models.MATMUL_ENV] = dtype
    lm = models.load(None)
    assert lm.matmul == dtype, (lm.matmul, dtype)
    model = lm.model
    nll, secs, top1 = [], [], []
    with torch.inference_mode():
        for ids in wins:
            set_context(model, ids.shape[1])
            t = time.perf_counter()
            logits = model(ids).logits[0, :-1].float()  # [L - 1, vocab]
            secs.append(time.perf_counter() - t)
            nll.append(float(F.cross_entropy(logits, ids[0, 1:])))
            top1.append(logits.argmax(-1))
    return {"matmul": dtype, "nll": nll, "seconds": secs, "top1": top1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--books", nargs="+", default=[str(DEFAULT_BOOKS)])
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from docreader import models
    tok = models.load(None).tokenizer
    wins = windows(held_out_books(args.books), tok, args.windows, args.length)
    if not wins:
        sys.exit(f"error: no held-out book has {args.length} tokens")
    f32, b16 = run("float32", wins), run("bfloat16", wins)
    agree = [float((a == b).float().mean()) for a, b in zip(f32["top1"], b16["top1"])]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    row = {"windows": len(wins), "length": args.length, "threads": torch.get_num_threads(),
           "ppl_float32": math.exp(mean(f32["nll"])), "ppl_bfloat16": math.exp(mean(b16["nll"])),
           "ppl_ratio": math.exp(mean(b16["nll"]) - mean(f32["nll"])), "top1_agreement": mean(agree),
           "seconds_float32": sum(f32["seconds"]), "seconds_bfloat16": sum(b16["seconds"])}
    row["speedup"] = row["seconds_float32"] / row["seconds_bfloat16"]
    print(json.dumps(row))
    print(f"{len(wins)} held-out windows x {args.length} tokens: perplexity {row['ppl_float32']:.3f} (float32) vs "
          f"{row['ppl_bfloat16']:.3f} (bf16 linears), x{row['ppl_ratio']:.4f}; top-1 agreement {row['top1_agreement']:.3f}; "
          f"{row['seconds_float32']:.1f} vs {row['seconds_bfloat16']:.1f} s ({row['speedup']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
