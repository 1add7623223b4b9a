"""Dense prefill at a length too long to run whole on a small CPU, composed from measured parts.

    python -m bench.dense_parts --tokens 131072

A dense prefill of 128k tokens takes hours on 2 cores. Its time is about (layers x one layer's causal
attention over L tokens) + (the rest of the model over L tokens: embeddings, norms, q/k/v/o projections,
RoPE, MLPs, the last position's logits). This times one layer's attention once, through transformers' own SDPA
function on the model's attention module (causal, fp32, as its dense prefill calls it), and the rest of the
model's prefill with attention replaced by a no-op, in chunks of `--chunk` tokens (a chunk's cost does not
depend on its positions), and adds them. What it leaves out: the KV cache writes, and any slow-down from
the parts sharing caches and the memory bus. Label the sum as composed from parts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import dsa


def _no_attention(module, query, key, value, attention_mask=None, **kwargs):
    """query [B, H, Lq, D] -> zeros [B, Lq, H, D]: the model without its attention's arithmetic."""
    return query.new_zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3]), None


AttentionInterface.register("no_attention", _no_attention)


@torch.inference_mode()
def time_attention(model, L: int) -> float:
    """Seconds for one layer's causal attention over L tokens (random q/k/v of the model's shapes)."""
    c = model.config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    g = torch.Generator().manual_seed(0)
    dtype = next(model.parameters()).dtype
    q = torch.randn(1, c.num_attention_heads, L, hd, generator=g, dtype=dtype)
    k = torch.randn(1, c.num_key_value_heads, L, hd, generator=g, dtype=dtype)
    v = torch.randn(1, c.num_key_value_heads, L, hd, generator=g, dtype=dtype)
    module = dsa.patch.decoder_layers(model)[1].self_attn
    t = time.perf_counter()
    sdpa_attention_forward(module, q, k, v, None, scaling=hd**-0.5, is_causal=True)
    return time.perf_counter() - t


@torch.inference_mode()
def time_rest(model, L: int, chunk: int) -> float:
    """Seconds for the model's prefill over L tokens with attention a no-op, `chunk` tokens per forward."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("no_attention")
    g = torch.Generator().manual_seed(L)
    try:
        t = time.perf_counter()
        for start in range(0, L, chunk):
            n = min(chunk, L - start)
            x = torch.randint(100, model.config.vocab_size - 100, (1, n), generator=g)
            model(x, use_cache=False, logits_to_keep=1)
        return time.perf_counter() - t
    finally:
        model.set_attn_implementation(previous)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=131072)
    ap.add_argument("--chunk", type=int, default=8192, help="tokens per forward of the no-attention model")
    ap.add_argument("--attention-only", action="store_true",
                    help="time one layer's attention only (the rest of the model can come from another run's phases)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from docreader import models
    lm = models.load(None, dtype="float32")
    model = lm.model
    dsa.detach(model)  # the plain model: no indexer
    L, layers = args.tokens, model.config.num_hidden_layers
    attn = time_attention(model, L)
    row = {"tokens": L, "threads": torch.get_num_threads(), "one_layer_attention_s": round(attn, 1), "layers": layers}
    if args.attention_only:
        print(json.dumps(row))
        return
    rest = time_rest(model, L, args.chunk)
    row |= {"attention_s": round(attn * layers, 1), "rest_s": round(rest, 1),
            "composed_dense_prefill_s": round(attn * layers + rest, 1)}
    print(json.dumps(row))
    print(f"dense prefill of {L:,} tokens, composed from parts: {layers} x {attn:.1f} s attention + {rest:.1f} s "
          f"for the rest of the model = {attn * layers + rest:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
