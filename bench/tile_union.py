"""How block-sparse is DSA's attention on real text? Per tile of 64 neighbouring queries, the share of the
causal 64x64 tiles that some query of the tile reads (what the GPU path's FlexAttention visits); and per tile
of 8 neighbouring queries, the distinct keys they attend over the sum of each one's (what the CPU kernel's
prefill tiles read, `csrc/tile.h`).

    python -m bench.tile_union sample_docs/pride_and_prejudice.md --tokens 32768

The real default model and its trained indexer on a real document (YaRN past 8k). The prefill runs as usual
(CPU kernel); a capture hook recomputes each sparse layer's selection for sampled chunks of queries with the
GPU path's selection code (`dsa.flex.select_picks`) and counts the tiles. Random weights on random tokens
make neighbouring queries' selections independent (the union of 64 queries x 64 blocks covers most tiles);
this measures what real text does.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import dsa
from bench.document import document_ids
from dsa import flex
from dsa.attention import _block_means
from dsa.longctx import set_context
from dsa.rope import rope_cos_sin


def key_union(picks: torch.Tensor, qpos: torch.Tensor, cfg: dsa.DSAConfig, q: int = 8) -> float:
    """Mean over tiles of q neighbouring queries: distinct attended keys / the sum of each query's keys."""
    ratios = []
    for t0 in range(0, len(qpos) - q + 1, q):
        sets = []
        for c in range(t0, t0 + q):
            qp = int(qpos[c])
            forced = set(range(min(cfg.sink_tokens, qp + 1))) | set(range(max(0, qp - cfg.local_window + 1), qp + 1))
            sets.append(set(picks[c][picks[c] >= 0].tolist()) | forced)
        ratios.append(len(set().union(*sets)) / sum(len(x) for x in sets))
    return statistics.mean(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("document", help="a text file (read as UTF-8)")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--sample", type=int, default=1024, help="queries sampled per region (start, middle, end)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from docreader import models
    lm = models.load(None, dtype="float32")
    model, cfg = lm.model, lm.model.dsa_state.config
    ids = document_ids(args.document, lm.tokenizer)[None, : args.tokens]
    L = ids.shape[1]
    S = args.sample
    regions = [(L // 4, L // 4 + S), (L // 2, L // 2 + S), (L - S, L)]
    rows = []

    def capture(layer, x, query, key):
        if not cfg.is_sparse_layer(layer) or x.shape[1] != L:
            return
        attn = model.model.layers[layer].self_attn
        qpos = torch.arange(L)
        qi, wi, ki = attn.indexer(x, qpos, rope_cos_sin(qpos, cfg.rope_dim, cfg.rope_theta))
        means = _block_means(ki, cfg.block_size)[0]
        for a, b in regions:
            _, picks = flex.select_picks(qi[0, a:b], wi[0, a:b], ki[0], means, qpos[a:b], cfg)
            num, _ = flex.tile_blocks(picks, qpos[a:b], L, cfg)
            causal = (torch.arange(a, b, flex.TILE) + flex.TILE - 1) // flex.TILE + 1
            rows.append({"layer": layer, "queries": [a, b], "tiles": int(num.sum()), "causal": int(causal.sum()),
                         "blocks_per_tile": float(num.float().mean()), "key_union_8": key_union(picks, qpos[a:b], cfg)})

    model.dsa_state.capture = capture
    set_context(model, L + 1)
    with torch.inference_mode():
        model(ids, **dsa.cache_arg(dsa.DSACache(model.config.num_hidden_layers)), use_cache=True, logits_to_keep=1)
    model.dsa_state.capture = None
    print(f"{L:,} tokens of {Path(args.document).name}; top_k {cfg.top_k}, n_blocks {cfg.n_blocks}; "
          f"{S} queries at each of {[r[0] for r in regions]}")
    print("| queries from | KV blocks read per 64-query tile (mean over layers) | causal tiles visited "
          "| distinct keys / sum, 8-query tiles |")
    print("|---|---|---|---|")
    for a, b in regions:
        rs = [r for r in rows if r["queries"][0] == a]
        frac = sum(r["tiles"] for r in rs) / sum(r["causal"] for r in rs)
        print(f"| {a:,} | {statistics.mean(r['blocks_per_tile'] for r in rs):.1f} | {frac:.1%} "
              f"| {statistics.mean(r['key_union_8'] for r in rs):.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"tokens": L, "document": args.document, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
