"""GPU smoke and sizing run for dsa.longtrain: a few training steps per length on a randomly initialised model
of the default model's shape, reporting seconds per step, tokens/s and peak GPU memory per length.

Why: the sparse-in-the-loop training compiles FlexAttention's forward and backward per length and holds one
layer's selection mask ([L, L] bools) at a time; this says what a lease can afford before the real run.

    python -m bench.long_smoke --config CONFIG_DIR --lengths 16384,65536,131072 --steps 3 --out smoke.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import numpy as np
import torch

from dsa import longtrain as LT
from dsa.config import DSAConfig
from dsa.longctx import set_rope
from dsa.lora import LoraConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a dir with the model's config.json (weights are random)")
    ap.add_argument("--lengths", default="16384,65536,131072")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from transformers import AutoConfig, AutoModelForCausalLM

    dev = "cuda"
    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(args.config)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).to(dev)
    lora_cfg = LoraConfig(rank=args.rank, alpha=float(args.rank))
    rope = LT.rope_choice(model, "yarn", 262144)
    set_rope(model, rope, 262144)
    lora, idx = LT.prepare(model, DSAConfig(), lora_cfg, None, seed=0)
    results = []
    for L in [int(x) for x in args.lengths.split(",")]:
        g = torch.Generator().manual_seed(L)
        tokens = torch.randint(0, cfg.vocab_size, (2, L), generator=g)
        answer = torch.zeros_like(tokens, dtype=torch.bool)
        answer[:, -8:] = True
        ph = LT.Phase(L, 1.0, tokens, answer)
        torch.cuda.reset_peak_memory_stats()
        rows: list[str] = []
        t = time.perf_counter()
        try:
            LT.train(model, [ph], lora_params=lora, idx_params=idx, lr=1e-4, idx_lr=1e-4, time_budget=1e9,
                     tokens_per_step=L, queries=args.queries, seed=0, max_steps=args.steps,
                     log=lambda r, **k: rows.append(r))
            steps = [json.loads(r)["s"] for r in rows]
            per_step = [b - a for a, b in zip(steps, steps[1:])] or steps
            res = {"L": L, "first_step_s": steps[0], "step_s": round(min(per_step), 2),
                   "tokens_per_s": round(L / max(min(per_step), 1e-9)),
                   "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1), "rows": rows}
        except torch.OutOfMemoryError as e:
            res = {"L": L, "error": f"OOM: {str(e)[:200]}", "s": round(time.perf_counter() - t, 1)}
            torch.cuda.empty_cache()
        results.append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "rows"}), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    random.seed(0)
    np.random.seed(0)
    sys.exit(main())
