"""One training step (forward + backward) with DSA's sparse attention in the loop vs dense flash attention, on the
same model, in one process: the ratio issue 22 asks for at 64k tokens.

    python -m bench.train_step --config CONFIG_DIR --lengths 16384,65536       # on a GPU; random weights

The model is the default model's shape from CONFIG_DIR/config.json (random weights: a step's time does not
depend on them), bf16, set up as `dsa.longtrain` trains it (LoRA rank 32 + norms trainable, checkpointed
layers, the vocabulary projection in checkpointed chunks, the shipped indexer config). The sparse step is the
LM loss through FlexAttention over DSA's selection (the indexer's own KL loss left out, so both sides do the
same work); the dense step detaches DSA and runs SDPA (flash) with the causal mask. Medians of --steps steps
after one warm-up step (which compiles FlexAttention), seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dsa import longtrain as LT
from dsa.config import DSAConfig
from dsa.longctx import set_rope
from dsa.lora import LoraConfig
from dsa.patch import detach

SHIPPED = Path(__file__).resolve().parents[1] / "dsa" / "weights" / "smollm2-135m-long" / "dsa_config.json"


def step_seconds(model, tokens: torch.Tensor, steps: int) -> float:
    """Median wall seconds of forward + backward of the LM loss over `tokens` [1, L]."""
    answer = torch.zeros_like(tokens, dtype=torch.bool)
    times = []
    for i in range(steps + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        hidden = model.model(input_ids=tokens).last_hidden_state
        loss, _ = LT.lm_loss(model, hidden, tokens, answer)
        loss.backward()
        torch.cuda.synchronize()
        if i:  # the first step compiles
            times.append(time.perf_counter() - t)
        model.zero_grad(set_to_none=True)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a dir with the model's config.json")
    ap.add_argument("--lengths", default="16384,65536")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    hf = AutoConfig.from_pretrained(args.config)
    model = AutoModelForCausalLM.from_config(hf, dtype=torch.bfloat16).cuda()
    set_rope(model, LT.rope_choice(model, "base", 262144), 262144)
    cfg = DSAConfig.load(SHIPPED)
    LT.prepare(model, cfg, LoraConfig(rank=32, alpha=32.0), None, seed=0)
    lengths = [int(x) for x in args.lengths.split(",")]
    tokens = {L: torch.randint(0, hf.vocab_size, (1, L), generator=torch.Generator().manual_seed(L)).cuda()
              for L in lengths}
    sparse = {L: step_seconds(model, tokens[L], args.steps) for L in lengths}
    detach(model)  # the same model and LoRA, attention back to SDPA (flash)
    dense = {L: step_seconds(model, tokens[L], args.steps) for L in lengths}
    rows = [{"L": L, "sparse_step_s": round(sparse[L], 3), "dense_step_s": round(dense[L], 3),
             "dense_over_sparse": round(dense[L] / sparse[L], 2)} for L in lengths]
    for row in rows:
        print(json.dumps(row), flush=True)
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GB")
    print(f"\n{torch.cuda.get_device_name()}, bf16, LoRA r32 + norms, checkpointed layers, batch 1; "
          f"{time.strftime('%Y-%m-%d')}\n\n| tokens | sparse step s | dense (flash) step s | dense / sparse |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['L']:,} | {r['sparse_step_s']:.2f} | {r['dense_step_s']:.2f} | {r['dense_over_sparse']:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
