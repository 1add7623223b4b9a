"""Where one sparse layer's GPU prefill time goes, against flash SDPA on the same tensors (one layer, batch 1).

    python -m bench.gpu_parts --lengths 32768,131072            # on a GPU
    python -m bench.gpu_parts --lengths 4096 --device cpu        # smoke run (eager FlexAttention)

The default model's attention shape (9 query heads over 3 KV heads of 64 dims, bf16) and the shipped DSA
config: the default path (Triton top-k for both selection stages, then each query gathering its own keys), its
parts, and the FlexAttention path training uses (`DSA_GATHER=0`). Indexer queries/keys are random unless --clustered: random keys make every query's selection
independent of its neighbours', the worst case for a 64-query tile's union of blocks; --clustered gives
neighbouring queries the same indexer query (up to noise), as real text tends to. Times are medians of
--repeat runs after a warm-up (which also compiles FlexAttention), in milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dsa import flex, triton_attend, triton_select, triton_topk
from dsa.attention import _block_means
from dsa.config import DSAConfig
from dsa.select import stage1_scores

SHIPPED = Path(__file__).resolve().parents[1] / "dsa" / "weights" / "smollm2-135m" / "dsa_config.json"


@contextlib.contextmanager
def env(**values: str):
    """Set environment variables (the paths `dsa.flex` reads at each call) for the block."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def timed(fn, device: str, repeat: int) -> float:
    """Median milliseconds of fn() over `repeat` runs after one warm-up."""
    fn()
    out = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def inputs(L: int, cfg: DSAConfig, device: str, dtype: torch.dtype, clustered: bool):
    g = torch.Generator(device="cpu").manual_seed(L)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    qi = r(L, cfg.index_heads, cfg.index_dim)
    if clustered:  # 64 neighbours share one indexer query, plus 10% noise
        qi = qi.view(-1, 64, *qi.shape[1:])[:, :1].expand(-1, 64, -1, -1).reshape(qi.shape) + 0.1 * qi
    wi = r(L, cfg.index_heads).abs() / (cfg.index_heads * cfg.index_dim) ** 0.5
    keys = F.layer_norm(r(L, cfg.index_dim), (cfg.index_dim,))
    q, k, v = r(9, L, 64), r(3, L, 64), r(3, L, 64)
    to = lambda t: t.to(device, dtype)  # noqa: E731
    keys = to(keys)
    return to(qi), wi.to(device), keys, _block_means(keys[None], cfg.block_size)[0], to(q), to(k), to(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="32768,131072")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--clustered", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = DSAConfig.load(SHIPPED)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    rows = []
    for L in [int(x) for x in args.lengths.split(",")]:
        qi, wi, keys, means, q, k, v = inputs(L, cfg, args.device, dtype, args.clustered)
        qpos = torch.arange(L, device=args.device)
        out = torch.empty(L, 9, 64, device=args.device, dtype=dtype)
        C = min(L, flex.CHUNK)
        row = {"L": L, "clustered": args.clustered}
        row["dense_sdpa_ms"] = timed(lambda: F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True,
                                                                            enable_gqa=True), args.device, args.repeat)
        layer = lambda: flex.prefill(q, k, v, qi, wi, keys, means, qpos, cfg, 0.125, out)  # noqa: E731
        row["dsa_layer_ms"] = timed(layer, args.device, args.repeat)  # the default: Triton top-k + gather attention
        with env(DSA_GATHER="0"):  # FlexAttention over the selection (what training runs)
            row["flex_layer_ms"] = timed(layer, args.device, args.repeat)
            counts = layer()
        row["tiles_frac"] = float(counts["tiles"] / counts["tiles_causal"])
        # the parts, for the last chunk of queries (the most expensive one), times the number of chunks
        n = -(-L // C)
        sl = slice(L - C, L)
        pick = lambda: flex.select_picks(qi[sl], wi[sl], keys, means, qpos[sl], cfg)  # noqa: E731
        row["select_ms"] = n * timed(pick, args.device, args.repeat)
        with env(DSA_TRITON="0"):  # selection in PyTorch ops (torch.topk, stage 2's scores as tensor ops)
            row["select_torch_ms"] = n * timed(pick, args.device, args.repeat)
        if triton_topk.available(keys):  # the default selection's four steps (last chunk, times the chunks)
            s1 = lambda: triton_select.stage1_scores(qi[sl], wi[sl], means, qpos[sl], L, cfg.block_size,  # noqa: E731
                                                     cfg.sink_tokens, cfg.local_window)
            bscore = s1()
            blocks = triton_topk.topk_indices(bscore, cfg.n_blocks)
            forced = flex.forced_slots(qpos[sl], cfg)
            slots = torch.cat([blocks, forced], -1)
            tscore = triton_select.stage2_scores(qi[sl], wi[sl].float(), keys, slots, qpos[sl], cfg.block_size,
                                                 cfg.sink_tokens, cfg.local_window)
            parts = {"stage1_scores": s1, "stage1_scores_torch": lambda: stage1_scores(qi[sl], wi[sl], means, qpos[sl], L, cfg),
                     "stage1_topk": lambda: triton_topk.topk_indices(bscore, cfg.n_blocks),
                     "stage2_scores": lambda: triton_select.stage2_scores(qi[sl], wi[sl].float(), keys, slots, qpos[sl],
                                                                          cfg.block_size, cfg.sink_tokens, cfg.local_window),
                     "stage2_topk": lambda: triton_topk.topk_indices(tscore, cfg.top_k)}
            row["select_parts_ms"] = {k: round(n * timed(f, args.device, args.repeat), 2) for k, f in parts.items()}
        _, picks = pick()
        idx = triton_attend.key_lists(picks[None], qpos[sl], cfg.sink_tokens, cfg.local_window) \
            if triton_attend.available(q) else None
        if idx is not None:
            o = out[None, sl]
            row["gather_attend_ms"] = n * timed(lambda: triton_attend.attend(q[None, :, sl], k[None], v[None], idx, 0.125, o),
                                                args.device, args.repeat)
        row["mask_and_tiles_ms"] = n * timed(lambda: (flex.picked_mask(picks, L, -(-C // 128) * 128),
                                                        flex.tile_blocks(picks, qpos[sl], L, cfg)),
                                               args.device, args.repeat)
        row["speedup_layer"] = row["dense_sdpa_ms"] / row["dsa_layer_ms"]
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"\none sparse layer, {dev}, {dtype}; selections {'clustered' if args.clustered else 'random'}\n")
    print("| tokens | flash SDPA ms | DSA layer ms | × | selection ms (PyTorch top-k) | gather attention ms "
          "| FlexAttention path ms (mask + tile list; tiles visited) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['L']:,} | {r['dense_sdpa_ms']:.1f} | {r['dsa_layer_ms']:.1f} | {r['speedup_layer']:.2f} "
              f"| {r['select_ms']:.1f} ({r['select_torch_ms']:.1f}) | {r.get('gather_attend_ms', float('nan')):.1f} "
              f"| {r['flex_layer_ms']:.1f} ({r['mask_and_tiles_ms']:.1f}; {r['tiles_frac']:.1%}) |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": dev, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
