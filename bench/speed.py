"""Dense SDPA vs DSA on the same model, in one process: prefill seconds, decode ms/token, KV bytes read
per decoded token, where DSA's time goes, and the dense/DSA ratios.

    make bench                                          # default model, 2k / 8k / 32k on the CPU
    python -m bench.speed --lengths 2048,8192 --decode 16 --json bench/results/speed.json
    python -m bench.speed --device cuda --lengths 8192,32768,131072   # on a GPU

Random token ids by default; `--text FILE` prefills a real document's tokens instead (repeated to L when
shorter), where neighbouring queries select alike and the CPU kernel's key reads hit the cache more often.
YaRN scaling past the native window. Dense is the
model with DSA detached (transformers' SDPA attention), DSA the same weights with the shipped indexer.
Both use the same KV cache (allocated once for prompt + decode), so the comparison isolates attention; DSA's
sparse layers may store K/V in bf16 (`--kv-dtype bfloat16`, what docreader uses past the native window).
`--prefill-chunk N` prefills N tokens per forward, as docreader does (default: one forward). `--random-cache`
times decode alone over caches filled with random keys and values (decode time does not depend on what the
cache holds), for lengths whose prefill would take too long to wait for. Timings are single runs after
a warm-up at 512 tokens: the machine is shared and noisy, so read the ratios, which are taken minutes
apart in one process, rather than the absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import dsa
from bench.document import document_ids
from docreader.generate import prefill
from dsa.longctx import set_context


COUNTS = ("keys_read", "tiles", "tiles_causal")  # profiling counters that are not seconds


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fill_random(model, cache: dsa.DSACache, L: int, device: str, chunk: int = 8192) -> None:
    """Put L random keys and values (and, for DSA's sparse layers, indexer keys) into every layer of `cache`."""
    c = model.config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    cfg = model.dsa_state.config if dsa.is_attached(model) else None
    dtype = next(model.parameters()).dtype
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device)

    for start in range(0, L, chunk):
        n = min(chunk, L - start)
        for i, layer in enumerate(cache.layers):
            layer.update(rand(1, c.num_key_value_heads, n, hd), rand(1, c.num_key_value_heads, n, hd))
            if cfg is not None and cfg.is_sparse_layer(i):
                cache.index_keys[i].append(rand(1, n, cfg.index_dim))


@torch.inference_mode()
def run_one(model, L: int, n_decode: int, device: str, sparse: bool, decode_only: bool = False,
            prefill_threads: int | None = None, text_ids: torch.Tensor | None = None, chunk: int = 0,
            kv_dtype: torch.dtype | None = None, random_cache: bool = False, graph: str | None = None,
            eager: bool = True) -> dict:
    """Prefill L random tokens, then greedy-free decode n_decode tokens (fixed ids); seconds + phases.

    decode_only: DSA fills its caches with a dense-attention prefill (the indexer keys are computed as
    usual), so long-context decode can be timed when the sparse prefill is too slow to wait for; decode
    is then sparse. random_cache: no prefill at all, the caches hold L random rows (prefill_s is nan).
    prefill_threads: prefill with this many threads, decode with the process's own. chunk: tokens per
    prefill forward (0: one forward). kv_dtype: how DSA's sparse layers store K/V (None: the model's dtype).
    graph: "sparse" or "dense" (the model in dense mode): then n_decode more tokens through `dsa.graph_decode`, timed
    apart (graph_decode_ms); eager=False skips the eager decode."""
    if text_ids is not None:
        x = text_ids.repeat(-(-L // len(text_ids)))[:L][None].to(device)
    else:
        g = torch.Generator().manual_seed(L)
        x = torch.randint(100, model.config.vocab_size - 100, (1, L), generator=g).to(device)
    capacity = L + n_decode + (n_decode + 1 if graph else 0)
    cache = (dsa.new_cache(model, capacity, kv_dtype) if sparse
             else dsa.DSACache(model.config.num_hidden_layers, capacity=capacity))
    phases: dict = {}
    ctx = dsa.profiling(model) if sparse else _null()
    with ctx as ph:
        _sync(device)
        threads = torch.get_num_threads()
        torch.set_num_threads(prefill_threads or threads)
        if sparse and decode_only:
            dsa.set_mode(model, "dense")
        t0 = time.perf_counter()
        if random_cache:
            fill_random(model, cache, L, device)
        else:
            prefill(model, x, cache, chunk or L)
        _sync(device)
        prefill_s = float("nan") if random_cache else time.perf_counter() - t0
        if sparse and decode_only:
            dsa.set_mode(model, "sparse")
        torch.set_num_threads(threads)
        pre = dict(ph or {})
        tok = torch.tensor([[1234]], device=device)
        t1 = time.perf_counter()
        for _ in range(n_decode if eager else 0):
            model(tok, **dsa.cache_arg(cache), use_cache=True)
        _sync(device)
        decode = (time.perf_counter() - t1) / n_decode if eager else float("nan")
        if ph is not None:
            phases = {"prefill": pre, "decode": {k: v - pre.get(k, 0) for k, v in ph.items()}}
    graph_ms = graph_decode_ms(model, cache, n_decode, device, indexer=graph == "sparse") if graph else None
    return {"prefill_s": prefill_s, "decode_ms": decode * 1e3, "phases": phases, "graph_decode_ms": graph_ms}


@torch.inference_mode()
def graph_decode_ms(model, cache: dsa.DSACache, n: int, device: str, indexer: bool = True) -> float:
    """ms per token of n steps of `dsa.graph_decode.GraphDecoder` (a CUDA graph per step on a GPU), each ending
    with the host reading the next token's id as generation does; the first step (capture) is not timed."""
    from dsa.graph_decode import GraphDecoder
    dec = GraphDecoder(model, cache, cache.get_seq_length() + n + 1, graph=device.startswith("cuda"), indexer=indexer)
    int(dec.step(1234).argmax())
    _sync(device)
    t = time.perf_counter()
    for _ in range(n):
        int(dec.step(1234).argmax())
    return (time.perf_counter() - t) / n * 1e3


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def kv_bytes_per_token(model, L: int, cfg: dsa.DSAConfig | None, keys_read: float | None,
                       kv_elt: int | None = None) -> float:
    """Bytes of K and V (and, for DSA, indexer keys and block means) read for one decoded token; kv_elt: bytes
    per K/V value in DSA's sparse layers (default: the model's)."""
    c = model.config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    elt = next(model.parameters()).element_size()
    per_tok = 2 * c.num_key_value_heads * hd * elt
    layers = c.num_hidden_layers
    if cfg is None:
        return layers * L * per_tok
    sparse = [i for i in range(layers) if cfg.is_sparse_layer(i)]
    dense_part = (layers - len(sparse)) * L * per_tok
    index_part = len(sparse) * (L * cfg.index_dim * elt + (L // cfg.block_size) * cfg.index_dim * 4)  # keys + block means
    return dense_part + (keys_read or 0) * per_tok * (kv_elt or elt) / elt + index_part


def random_model(config_dir: str, dtype: str):
    """The architecture of config_dir with random weights, DSA attached with the shipped indexer if any."""
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(config_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype), attn_implementation="sdpa").eval()
    shipped = dsa.find_shipped(model.config)
    dsa.attach(model, dsa.DSAConfig.load(shipped / "dsa_config.json") if shipped else dsa.DSAConfig())
    if shipped:
        dsa.load_indexer(model, shipped)
    name = f"{Path(config_dir).name} (random weights)"
    return SimpleNamespace(name=name, model=model, indexer_weights=str(shipped) if shipped else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="local HF model dir (default: docreader's default model)")
    ap.add_argument("--random-weights", metavar="CONFIG_DIR", default=None,
                    help="build the model from CONFIG_DIR/config.json with random weights (speed does not depend on "
                         "weight values; for machines without the model); the shipped indexer still loads")
    ap.add_argument("--lengths", default="2048,8192,32768")
    ap.add_argument("--decode", type=int, default=16, help="decoded tokens per measurement")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    ap.add_argument("--only", choices=["dense", "dsa"], default=None,
                    help="measure one side only (to run dense and DSA side by side on disjoint cores, e.g. with taskset)")
    ap.add_argument("--decode-only", action="store_true",
                    help="time decode only: DSA's caches are filled by a dense-attention prefill (prefill columns "
                         "then compare dense with dense)")
    ap.add_argument("--random-cache", action="store_true",
                    help="time decode only, over caches holding random keys and values (no prefill; decode time "
                         "does not depend on the cache's contents)")
    ap.add_argument("--prefill-chunk", type=int, default=0, help="tokens per prefill forward (default: one forward)")
    ap.add_argument("--kv-dtype", choices=["float32", "bfloat16"], default=None,
                    help="how DSA's sparse layers store K/V (default: the model's dtype); dense keeps the model's")
    ap.add_argument("--prefill-threads", type=int, default=None, help="threads for prefill (decode keeps the default)")
    ap.add_argument("--text", default=None, help="a UTF-8 text file whose tokens are prefilled instead of random ids "
                                                  "(needs the model's tokenizer: not with --random-weights)")
    ap.add_argument("--graphs", action="store_true",
                    help="also time decode through dsa.graph_decode (one CUDA graph per step on a GPU) for DSA and for "
                         "dense attention over the same cache (the model in dense mode)")
    ap.add_argument("--json", default="bench/results/speed.json")
    args = ap.parse_args()
    if args.text and args.random_weights:
        ap.error("--text needs a real model's tokenizer; drop --random-weights")
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")

    if args.random_weights:
        lm = random_model(args.random_weights, dtype)
    else:
        from docreader import models  # only for locating/installing the default model and its indexer
        if args.model is None:
            models.install_default(progress=print)
        lm = models.load(args.model, dtype=dtype)
    model = lm.model.to(args.device)
    text_ids = document_ids(args.text, lm.tokenizer, add_special_tokens=False) if args.text else None
    cfg = model.dsa_state.config
    lengths = [int(v) for v in args.lengths.split(",")]
    kv_dtype = getattr(torch, args.kv_dtype) if args.kv_dtype else None
    runs = dict(prefill_threads=args.prefill_threads, text_ids=text_ids, chunk=args.prefill_chunk,
                random_cache=args.random_cache)

    # warm-up (allocators, kernels)
    run_one(model, 512, 2, args.device, sparse=True)
    rows = []
    for L in lengths:
        factor = set_context(model, L + args.decode + 1)
        skip = {"prefill_s": float("nan"), "decode_ms": float("nan"), "phases": {}}
        if args.device.startswith("cuda"):  # compile FlexAttention and the SDPA kernels for this length first
            run_one(model, L, 1, args.device, sparse=True)
        r_dsa = skip if args.only == "dense" else run_one(model, L, args.decode, args.device, sparse=True,
                                                           decode_only=args.decode_only, kv_dtype=kv_dtype,
                                                           graph="sparse" if args.graphs else None, **runs)
        r_gdense = None
        if args.graphs and args.only != "dsa":
            dsa.set_mode(model, "dense")
            r_gdense = run_one(model, L, args.decode, args.device, sparse=True, kv_dtype=kv_dtype, graph="dense",
                               eager=False, **runs)
            dsa.set_mode(model, "sparse")
        keys_read = r_dsa["phases"].get("decode", {}).get("keys_read", 0) / max(args.decode, 1)
        dense_cfg = model.dsa_state.config
        dsa.detach(model)
        if args.device.startswith("cuda"):
            run_one(model, L, 1, args.device, sparse=False)
        r_dense = skip if args.only == "dsa" else run_one(model, L, args.decode, args.device, sparse=False, **runs)
        dsa.attach(model, dense_cfg)
        if lm.indexer_weights:
            dsa.load_indexer(model, lm.indexer_weights)
        pre = r_dsa["phases"].get("prefill", {})
        row = {"L": L, "yarn_factor": factor,
               "dense_prefill_s": r_dense["prefill_s"], "dsa_prefill_s": r_dsa["prefill_s"],
               "dense_decode_ms": r_dense["decode_ms"], "dsa_decode_ms": r_dsa["decode_ms"],
               "dense_kv_MB_per_token": kv_bytes_per_token(model, L, None, None) / 1e6,
               "dsa_kv_MB_per_token": kv_bytes_per_token(model, L, cfg, keys_read,
                                                         kv_dtype.itemsize if kv_dtype else None) / 1e6,
               "dsa_prefill_phases_s": {k: round(v, 2) for k, v in pre.items() if k not in COUNTS},
               "dsa_decode_phases_ms": {k: round(v / args.decode * 1e3, 2)
                                        for k, v in r_dsa["phases"].get("decode", {}).items() if k not in COUNTS}}
        if pre.get("tiles_causal"):  # GPU path: share of the causal 64x64 tiles FlexAttention visited
            row["dsa_prefill_tiles_frac"] = pre["tiles"] / pre["tiles_causal"]
        if args.graphs:
            row["dsa_graph_decode_ms"] = r_dsa.get("graph_decode_ms") or float("nan")
            row["dense_graph_decode_ms"] = r_gdense["graph_decode_ms"] if r_gdense else float("nan")
            row["graph_decode_speedup"] = row["dense_graph_decode_ms"] / row["dsa_graph_decode_ms"]
        row["prefill_speedup"] = row["dense_prefill_s"] / row["dsa_prefill_s"]
        row["decode_speedup"] = row["dense_decode_ms"] / row["dsa_decode_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores" if args.device == "cpu"
               else torch.cuda.get_device_name())
    from dsa import kernels
    if args.device.startswith("cuda"):
        kernel = "GPU prefill path (chunked selection + FlexAttention), PyTorch decode"
    elif kernels.available():
        kernel = (f"CPU kernel, {kernels.isa()} ({'decode split over OpenMP threads' if kernels.openmp() else 'no OpenMP'})")
    else:
        kernel = f"PyTorch path{' (' + kernels.build_error() + ')' if kernels.build_error() else ''}"
    tiles = [f"{r['L']:,}: {r['dsa_prefill_tiles_frac']:.1%}" for r in rows if "dsa_prefill_tiles_frac" in r]
    if tiles:
        print("FlexAttention visited this share of the causal 64x64 tiles: " + ", ".join(tiles))
    tokens = f"tokens of {Path(args.text).name}" if args.text else "random token ids"
    how = ("no prefill (random caches)" if args.random_cache
           else f"prefill in chunks of {args.prefill_chunk:,}" if args.prefill_chunk else "prefill in one forward")
    print(f"\n{lm.name} ({dtype}), {tokens}, on {args.device} — {machine}; DSA via {kernel}; top_k {cfg.top_k}, n_blocks {cfg.n_blocks}, "
          f"sink {cfg.sink_tokens}, local {cfg.local_window}, dense layers {cfg.dense_layers}; "
          f"{args.decode} decoded tokens per length; DSA K/V {args.kv_dtype or dtype}; {how}; {time.strftime('%Y-%m-%d')}\n")
    print("| tokens | prefill dense s | prefill DSA s | prefill ×  | decode dense ms/tok | decode DSA ms/tok | decode × "
          "| KV read/token dense MB | DSA MB | DSA prefill split (indexer / selection / attention, of which dense layers, s) "
          "| DSA decode split (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p, d = r["dsa_prefill_phases_s"], r["dsa_decode_phases_ms"]
        print(f"| {r['L']:,} | {r['dense_prefill_s']:.1f} | {r['dsa_prefill_s']:.1f} | {r['prefill_speedup']:.2f} "
              f"| {r['dense_decode_ms']:.0f} | {r['dsa_decode_ms']:.0f} | {r['decode_speedup']:.2f} "
              f"| {r['dense_kv_MB_per_token']:.1f} | {r['dsa_kv_MB_per_token']:.1f} "
              f"| {p.get('indexer', 0):.1f} / {p.get('selection', 0):.1f} / {p.get('attention', 0):.1f}, "
              f"{p.get('attention_dense_layers', 0):.1f} "
              f"| {d.get('indexer', 0):.1f} / {d.get('selection', 0):.1f} / {d.get('attention', 0):.1f} |")
    if args.graphs:
        print("\nDecode through dsa.graph_decode (fixed shapes" + (", one CUDA graph per step" if args.device != "cpu"
              else ", no graph on the CPU") + "; dense = the same model and cache in dense mode, indexer off):\n")
        print("| tokens | decode dense ms/tok | decode DSA ms/tok | decode × |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['L']:,} | {r['dense_graph_decode_ms']:.2f} | {r['dsa_graph_decode_ms']:.2f} "
                  f"| {r['graph_decode_speedup']:.2f} |")
    if len(rows) > 1:
        r0 = rows[0]
        print(f"\nDSA decode at {rows[-1]['L']:,} is {rows[-1]['dsa_decode_ms'] / r0['dsa_decode_ms']:.2f}× "
              f"its decode time at {r0['L']:,}.")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model": lm.name, "device": args.device, "machine": machine,
                                               "dtype": dtype, "tokens": tokens, "dsa": cfg.to_dict(), "dsa_path": kernel, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
