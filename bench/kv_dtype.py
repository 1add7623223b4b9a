"""Does storing the sparse layers' K/V in bf16 change answers? The same prompt through differently run caches.

    python -m bench.kv_dtype sample_docs/pride_and_prejudice.md --tokens 16384 --new 32 \
        --runs float32:8192,bfloat16:8192,float32:4096

The default model (its shipped indexer, YaRN past 8k) reads the first `--tokens` tokens of a document and a
question, greedily, once per run (K/V dtype of the sparse layers : prefill chunk): per run against the first,
how far the first answer token's logits move, for how many tokens the greedy answers agree, and the cache
sizes. A run that differs from the first only in its chunk size shows how much a harmless change of
summation order moves the same things (selection is top-k: a small change can flip a pick). Plain greedy
decoding (no repetition guards).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import dsa
from bench.document import document_ids
from docreader.generate import prefill
from dsa.longctx import set_context

QUESTION = "\n\nQuestion: Who is Mr. Darcy's friend who rents Netherfield? Answer:"


def cache_bytes(cache: dsa.DSACache) -> int:
    """Bytes of the K/V buffers (their filled part)."""
    return sum(b.view.numel() * b.view.element_size() for layer in cache.layers for b in (layer._k, layer._v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("document")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--runs", default="float32:8192,bfloat16:8192", help="DTYPE:CHUNK,... (the first is the reference)")
    args = ap.parse_args()
    from docreader import models
    lm = models.load(None, dtype="float32")
    model, tok = lm.model, lm.tokenizer
    ids = document_ids(args.document, tok)[: args.tokens].tolist() + tok(QUESTION, add_special_tokens=False)["input_ids"]
    set_context(model, len(ids) + args.new)
    runs = []
    for spec in args.runs.split(","):
        name, chunk = spec.split(":")
        cache = dsa.new_cache(model, capacity=len(ids) + args.new, dtype=getattr(torch, name))
        with torch.inference_mode():
            t = time.perf_counter()
            logits, cache = prefill(model, torch.tensor([ids]), cache, int(chunk))
            prefill_s = time.perf_counter() - t
            tokens = [int(logits.argmax())]
            for _ in range(args.new - 1):  # plain greedy: no repetition guards, so only the cache differs
                out = model(torch.tensor([tokens[-1:]]), **dsa.cache_arg(cache), use_cache=True)
                tokens.append(int(out.logits[0, -1].argmax()))
        runs.append({"run": spec, "tokens": tokens, "logits": logits.float(), "prefill_s": round(prefill_s, 1),
                     "kv_MB": round(cache_bytes(cache) / 1e6), "answer": tok.decode(tokens)})
    ref = runs[0]
    for r in runs:
        agree = next((i for i, (x, y) in enumerate(zip(ref["tokens"], r["tokens"])) if x != y), len(r["tokens"]))
        row = {"run": r["run"], "prompt_tokens": len(ids), "kv_MB": r["kv_MB"], "prefill_s": r["prefill_s"],
               "first_logits_max_abs_diff": round(float((r["logits"] - ref["logits"]).abs().max()), 4),
               "first_logits_max_abs": round(float(ref["logits"].abs().max()), 2),
               "greedy_tokens_agree": agree, "of": args.new, "answer": r["answer"]}
        print(json.dumps(row, ensure_ascii=False))

if __name__ == "__main__":
    main()
