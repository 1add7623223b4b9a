"""Context extension with DSA's sparse attention in the loop: a LoRA delta and the indexer, trained together.

This is DeepSeek-V3.2's second (sparse) training stage made parameter-efficient for a small model:
- the language-model loss flows through the *sparse* attention (every sparse layer reads only what the
  indexer selected: `dsa.flex`, FlexAttention over the selection, forward and backward on a GPU) into LoRA
  deltas of every linear and into the RMSNorms (LongLoRA: norms are needed to extend context);
- the indexer learns only from its own KL loss, its input detached: on a random chunk of queries per layer
  and step, KL(attention || indexer) over the tokens the selection picked (DeepSeek's "selected set"), plus
  the same KL over candidate 64-token blocks, which stage 1 of our selection ranks (dsa.train's two-stage);
- RoPE is fixed for all lengths to the scaling chosen (YaRN over the native window, or a larger base);
- lengths grow in phases (e.g. 16k then 64k tokens), each with its share of a wall-clock budget;
- windows come from bench/make_long_data.py: tokens uint16 [N, L] and an `answer` mask [N, L]; the loss is
  the mean next-token loss over all tokens plus the mean over answer tokens (synthetic retrieval answers
  are a tiny share of tokens; without the second term they barely move the loss).

Memory: decoder layers are checkpointed (each layer's selection mask, [L, L] bools, lives only while that
layer runs forward or backward); the vocabulary projection runs in checkpointed chunks.

    python -m dsa.longtrain --gguf-dir G --gguf-file F --data .carry/long --phases 16384:0.4,65536:0.6 \\
        --init-indexer dsa/weights/smollm2-135m --time-budget 420 --out /tmp/long
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import flex
from .attention import _block_means
from .config import DSAConfig
from .longctx import set_rope, yarn
from .lora import LoraConfig, add_lora, merge, resume, save_adapter
from .patch import decoder_layers
from .train import _cast_input, attention_target, block_kl_chunk, layer_scale, load_model, lr_at, selectable_kl_chunk
from .weights import load_indexer, save_indexer

# -- data ------------------------------------------------------------------------------------------


def load_windows(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bench/make_long_data.py's (or make_sft_data.py's) windows_{L}.npz -> tokens int64 [N, L], answer bool
    [N, L], lm bool [N, L] (tokens the plain next-token loss uses; every token when the file has no mask)."""
    z = np.load(path)
    tokens = torch.from_numpy(z["tokens"].astype(np.int64))
    answer = torch.from_numpy(z["answer"].astype(bool)) if "answer" in z else torch.zeros_like(tokens, dtype=torch.bool)
    lm = torch.from_numpy(z["lm"].astype(bool)) if "lm" in z else torch.ones_like(tokens, dtype=torch.bool)
    return tokens, answer, lm


@dataclass
class Phase:
    seq_len: int
    share: float  # of the time budget
    tokens: torch.Tensor | None = None
    answer: torch.Tensor | None = None
    lm: torch.Tensor | None = None


def parse_phases(spec: str, data_dir: str | Path | None) -> list[Phase]:
    """"16384:0.4,65536:0.6" -> phases, each with windows_{L}.npz from data_dir."""
    phases = []
    for part in spec.split(","):
        L, share = part.split(":")
        ph = Phase(int(L), float(share))
        if data_dir is not None:
            ph.tokens, ph.answer, ph.lm = load_windows(Path(data_dir) / f"windows_{ph.seq_len}.npz")
            if ph.tokens.shape[1] < ph.seq_len:
                raise ValueError(f"windows_{ph.seq_len}.npz holds {ph.tokens.shape[1]}-token windows")
        phases.append(ph)
    total = sum(p.share for p in phases)
    for p in phases:
        p.share /= total
    return phases


# -- RoPE ------------------------------------------------------------------------------------------


def rope_choice(model: nn.Module, kind: str, max_positions: int) -> dict:
    """RoPE parameters covering max_positions: "yarn" (YaRN over the native window) or "base" (the plain
    rotary with its base raised NTK-style so the slowest dimension spans the new length as it spanned the old)."""
    cfg = model.config
    native = getattr(cfg, "_dsa_native_window", cfg.max_position_embeddings)
    factor = max_positions / native
    if kind == "yarn":
        return yarn(cfg, float(factor))
    if kind == "base":
        rope = dict(getattr(cfg, "_dsa_native_rope", None) or cfg.rope_parameters)
        d = getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
        rope.update({"rope_type": "default", "rope_theta": float(rope["rope_theta"]) * factor ** (d / (d - 2))})
        return rope
    raise ValueError(f"rope must be 'yarn' or 'base', got {kind!r}")


@torch.no_grad()
def position_nll(model: nn.Module, ids: torch.Tensor, buckets: list[int]) -> list[float]:
    """Mean next-token NLL of one window [1, L] in position buckets [b_i, b_{i+1}) (the model as it is)."""
    hidden = getattr(model, "model", model)(input_ids=ids, use_cache=False).last_hidden_state
    nll = []
    for chunk in range(0, ids.shape[1] - 1, 4096):
        h = hidden[:, chunk:chunk + 4096]
        tgt = ids[:, chunk + 1:chunk + 1 + h.shape[1]]
        logits = model.lm_head(h[:, :tgt.shape[1]]).float()
        nll.append(F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="none"))
    nll = torch.cat(nll)
    return [float(nll[a:b].mean()) for a, b in zip(buckets[:-1], buckets[1:])]


# -- losses ----------------------------------------------------------------------------------------


def _lm_chunk(lm_head: nn.Module, h: torch.Tensor, tgt: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h [n, d], tgt [n], w [n, 2] -> [2]: weighted next-token losses (all tokens, answer tokens)."""
    ce = F.cross_entropy(lm_head(h).float(), tgt, reduction="none")  # [n]
    return (ce[:, None] * w).sum(0)


def lm_loss(model: nn.Module, hidden: torch.Tensor, ids: torch.Tensor, answer: torch.Tensor,
            lm: torch.Tensor | None = None, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [B, L, d], ids/answer/lm [B, L] -> (loss, [mean over the lm tokens, mean over answer tokens]):
    the loss is their sum, means over all B windows' tokens (a term is 0 for windows without such tokens; lm
    None: every token). The vocabulary projection runs per chunk under checkpointing, so [B * L, V] logits
    never exist at once."""
    h, tgt, ans = hidden[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), answer[:, 1:].flatten().float()
    plain = torch.ones_like(ans) if lm is None else lm[:, 1:].flatten().float()
    n, n_ans = tgt.shape[0], ans.sum()
    w = torch.stack([plain / plain.sum().clamp_min(1.0), ans / n_ans.clamp_min(1.0)], 1)  # [n, 2]
    parts = hidden.new_zeros(2, dtype=torch.float32)
    for c0 in range(0, n, chunk):
        sl = slice(c0, min(c0 + chunk, n))
        parts = parts + checkpoint(_lm_chunk, model.lm_head, h[sl], tgt[sl], w[sl], use_reentrant=False)
    return parts.sum(), parts.detach()


class Tap:
    """Stashes each sparse layer's detached input x [1, L, hidden] and post-RoPE q [1, H, L, D], k [1, Hkv, L, D]
    during the forward (not during checkpoint recomputation: the trainer switches it off before backward). Of a
    batch of B windows it keeps one row per layer, (row + layer) % B: the indexer's KL costs what one window's
    does, and the layers still see different windows."""

    def __init__(self, cfg: DSAConfig) -> None:
        self.cfg, self.on, self.row = cfg, False, 0
        self.store: dict[int, tuple] = {}

    def __call__(self, layer: int, x: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> None:
        if self.on and self.cfg.is_sparse_layer(layer):
            r = (self.row + layer) % x.shape[0]
            self.store[layer] = (x[r:r + 1].detach(), query[r:r + 1].detach(), key[r:r + 1].detach())


def indexer_loss(model: nn.Module, store: dict[int, tuple], queries: int, rng: random.Random) -> tuple[torch.Tensor, float]:
    """Mean over sparse layers of the indexer's KL on one random chunk of `queries` queries per layer: over
    the tokens the selection picked (renormalised, weighted by their attention mass) plus over candidate
    blocks. Gradients reach only the indexer (its input was detached)."""
    cfg: DSAConfig = model.dsa_state.config
    layers = decoder_layers(model)
    total, parts = 0.0, []
    for li, (x, q, k) in store.items():
        L = x.shape[1]
        lo = min(cfg.budget, L - queries)
        c0 = rng.randrange(lo, L - queries + 1)
        c1 = c0 + queries
        idx = layers[li].self_attn.indexer
        positions = torch.arange(c1, device=x.device)
        qi, wi, ki = idx(x[:, :c1], positions)
        means = _block_means(ki, cfg.block_size)
        with torch.no_grad():
            p = attention_target(q, k, c0, c1, layer_scale(layers[li], q.shape[-1]))  # [1, C, c1]
            _, picks = flex.select_picks(qi[0, c0:c1], wi[0, c0:c1], ki[0], means[0], positions[c0:c1], cfg)
            cand = torch.zeros(queries, c1 + 1, dtype=torch.bool, device=x.device)
            cand.scatter_(1, torch.where(picks >= 0, picks, c1), True)
            cand = cand[:, :c1]
        t_tok, m_tok = selectable_kl_chunk(p, qi, wi, ki, c0, c1, cfg, cand=cand)
        t_blk, m_blk = block_kl_chunk(p, qi, wi, means, c0, c1, cfg)
        loss = t_tok / m_tok.clamp_min(1e-9) + t_blk / m_blk.clamp_min(1e-9)
        total = total + loss
        parts.append(float(loss.detach()))
    n = max(len(store), 1)
    return total / n, sum(parts) / n


# -- model -----------------------------------------------------------------------------------------


def prepare(model: nn.Module, dsa_cfg: DSAConfig, lora_cfg: LoraConfig, init_indexer: str | None,
            seed: int) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Attach DSA (fp32 trainable indexers), wrap linears with LoRA; -> (LoRA + norm params, indexer params)."""
    from .patch import attach, indexer_parameters

    torch.manual_seed(seed)
    attach(model, dsa_cfg)
    if init_indexer:
        load_indexer(model, init_indexer)
    lora_params = add_lora(model, lora_cfg)  # freezes everything else first
    for layer in decoder_layers(model):
        idx = getattr(layer.self_attn, "indexer", None)
        if idx is not None:
            idx.float()
            idx.register_forward_pre_hook(_cast_input)
    idx_params = indexer_parameters(model)
    for p in idx_params:
        p.requires_grad_(True)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return lora_params, idx_params


# -- loop ------------------------------------------------------------------------------------------


def train(model: nn.Module, phases: list[Phase], *, lora_params, idx_params, lr: float, idx_lr: float,
          time_budget: float, tokens_per_step: int, queries: int, seed: int, max_steps: int | None = None,
          interleave: bool = False, batch_tokens: int | None = None, log=print) -> dict:
    """Phases in order, each for its share of time_budget seconds (or of max_steps steps) — or, with
    interleave, every step from the phase furthest below its share so far (a mixture of lengths rather
    than a curriculum); one optimizer step per tokens_per_step tokens (windows accumulated). Windows shorter
    than batch_tokens (default: tokens_per_step) run batch_tokens // L at once, their losses averaged over all
    their tokens: on an H200 a 4k window cost 0.9 s and a 64k one 4.3 s, so short windows are bound by per-op
    overhead (launches, host work), which one batched forward pays once.
    -> summary with the loss curve."""
    batch_tokens = batch_tokens or tokens_per_step
    opt = torch.optim.AdamW([{"params": lora_params, "lr": lr, "base": lr},
                             {"params": idx_params, "lr": idx_lr, "base": idx_lr}],
                            betas=(0.9, 0.95), weight_decay=0.0)
    tap, rng = Tap(model.dsa_state.config), random.Random(seed)
    model.dsa_state.capture = tap
    device = lora_params[0].device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0, step, tokens, log_rows = time.perf_counter(), 0, 0, []
    total = max_steps or time_budget
    clock = (lambda: step) if max_steps else (lambda: time.perf_counter() - t0)
    orders = [torch.randperm(ph.tokens.shape[0], generator=torch.Generator().manual_seed(seed + ph.seq_len))
              for ph in phases]
    cursors, used = [0] * len(phases), [0.0] * len(phases)  # windows taken, clock spent per phase

    def next_phase() -> int | None:
        now = clock()
        if now >= total:
            return None
        if interleave:
            return max(range(len(phases)), key=lambda i: phases[i].share - used[i] / max(now, 1e-9))
        ends = np.cumsum([p.share * total for p in phases])
        return next(i for i, e in enumerate(ends) if now < e or i == len(phases) - 1)

    while (pi := next_phase()) is not None:
        ph, started = phases[pi], clock()
        windows = max(1, tokens_per_step // ph.seq_len)
        rows = max(1, min(windows, batch_tokens // ph.seq_len))  # windows per forward: short ones go together
        for g in opt.param_groups:
            g["lr"] = lr_at(started / total, g["base"], warmup=0.05)
        opt.zero_grad(set_to_none=True)
        lm_sum, ans_sum, idx_sum, n_ans = 0.0, 0.0, 0.0, 0
        batches = [rows] * (windows // rows) + ([windows % rows] if windows % rows else [])
        for B in batches:
            order = orders[pi]
            r = order[torch.arange(cursors[pi], cursors[pi] + B) % len(order)]
            cursors[pi] += B
            ids = ph.tokens[r, :ph.seq_len].to(device)  # [B, L]
            ans = ph.answer[r, :ph.seq_len].to(device)
            plain = ph.lm[r, :ph.seq_len].to(device) if ph.lm is not None else None
            share = B / windows  # of this step's loss
            tap.on, tap.store, tap.row = True, {}, rng.randrange(B)
            hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
            tap.on = False
            loss, parts = lm_loss(model, hidden, ids, ans, plain)
            (loss * share).backward()  # LM loss -> LoRA + norms, through the sparse attention
            del hidden
            iloss, iavg = indexer_loss(model, tap.store, queries, rng)
            (iloss * share).backward()  # indexer KL -> indexer only
            tap.store = {}
            lm_sum += float(parts[0]) * share
            ans_sum += float(parts[1]) * share
            idx_sum += iavg * share
            n_ans += int(ans.sum())
            tokens += ids.numel()
        gn = float(torch.nn.utils.clip_grad_norm_(lora_params, 1.0))
        torch.nn.utils.clip_grad_norm_(idx_params, 1.0)
        opt.step()
        step += 1
        sync()
        used[pi] += clock() - started
        row = {"step": step, "seq_len": ph.seq_len, "lm_loss": round(lm_sum, 4), "answer_loss": round(ans_sum, 4),
               "indexer_kl": round(idx_sum, 4), "answer_tokens": n_ans, "gnorm": round(gn, 3),
               "lr": round(opt.param_groups[0]["lr"], 7), "tokens": tokens, "s": round(time.perf_counter() - t0, 1)}
        log_rows.append(row)
        log(json.dumps(row), flush=True)
    model.dsa_state.capture = None
    return {"steps": step, "tokens": tokens, "seconds": round(time.perf_counter() - t0, 1), "log": log_rows,
            "phase_clock": [round(u, 1) for u in used]}


# -- CLI -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dsa.longtrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a Hugging Face model dir")
    ap.add_argument("--gguf-dir")
    ap.add_argument("--gguf-file")
    ap.add_argument("--data", required=True, help="dir with bench/make_long_data.py's windows_{L}.npz")
    ap.add_argument("--phases", default="16384:0.4,65536:0.6", help="seq_len:share of the time budget, in order")
    ap.add_argument("--max-positions", type=int, default=262144, help="context the RoPE scaling must cover")
    ap.add_argument("--rope", default="yarn", choices=("yarn", "base"))
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--lr", type=float, default=2e-4, help="LoRA and norms")
    ap.add_argument("--indexer-lr", type=float, default=3e-4)
    ap.add_argument("--indexer-rope-theta", type=float, default=None, help="default: keep the init's")
    ap.add_argument("--init-indexer", help="indexer weights dir to start from (its dsa_config.json is used)")
    ap.add_argument("--init-adapter", help="a saved delta to keep training (its rank, targets and RoPE are used)")
    ap.add_argument("--stage", default="context extension, sparse attention in the loop (DeepSeek-V3.2 stage 2, LoRA + norms)",
                    help="what this run is, for the training record")
    ap.add_argument("--interleave", action="store_true", help="mix the phases' lengths every step (fine-tuning) "
                    "instead of running them in order (a curriculum)")
    ap.add_argument("--tokens-per-step", type=int, default=65536)
    ap.add_argument("--batch-tokens", type=int, default=None, help="tokens per forward: shorter windows are batched "
                    "(default: --tokens-per-step; 0 = one window per forward)")
    ap.add_argument("--queries", type=int, default=256, help="queries per layer in the indexer's KL")
    ap.add_argument("--time-budget", type=float, default=420.0, help="seconds of training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    t = time.perf_counter()
    model = load_model(args.model, args.gguf_dir, args.gguf_file, args.device, dtype)
    phases = parse_phases(args.phases, args.data)
    print(f"model and data loaded in {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    if args.init_adapter:  # the delta's own RoPE, rank and targets: the stage continues it
        from .lora import read_config
        init = read_config(args.init_adapter)
        rope, args.max_positions, args.rank, args.alpha = init.rope, init.max_positions, init.rank, init.alpha
    else:
        rope = rope_choice(model, args.rope, args.max_positions)
    set_rope(model, rope, args.max_positions)
    dsa_cfg = DSAConfig.load(Path(args.init_indexer) / "dsa_config.json") if args.init_indexer else DSAConfig()
    dsa_cfg.mode = "sparse"
    if args.indexer_rope_theta:
        dsa_cfg.rope_theta = args.indexer_rope_theta
    lora_cfg = LoraConfig(rank=args.rank, alpha=args.alpha, rope=rope, max_positions=args.max_positions)
    lora_params, idx_params = prepare(model, dsa_cfg, lora_cfg, args.init_indexer, args.seed)
    if args.init_adapter:
        resume(model, args.init_adapter)
    n_lora = sum(p.numel() for p in lora_params)
    batch_tokens = args.tokens_per_step if args.batch_tokens is None else max(args.batch_tokens, 1)
    summary = train(model, phases, lora_params=lora_params, idx_params=idx_params, lr=args.lr, idx_lr=args.indexer_lr,
                    time_budget=args.time_budget, tokens_per_step=args.tokens_per_step, queries=args.queries,
                    seed=args.seed, interleave=args.interleave, batch_tokens=batch_tokens)
    record = {"stage": args.stage,
              "model": args.gguf_file or args.model, "data": str(args.data),
              "init_adapter": args.init_adapter, "interleave": args.interleave, "phase_clock_s": summary["phase_clock"],
              "phases": [{"seq_len": p.seq_len, "share": round(p.share, 3), "windows": int(p.tokens.shape[0])}
                         for p in phases],
              "rope": rope, "max_positions": args.max_positions, "lora": lora_cfg.to_dict(), "trainable_lora_params": n_lora,
              "lr": args.lr, "indexer_lr": args.indexer_lr, "tokens_per_step": args.tokens_per_step,
              "batch_tokens": batch_tokens,
              "indexer_queries_per_layer": args.queries, "init_indexer": args.init_indexer, "seed": args.seed,
              "dsa": dsa_cfg.to_dict(), "time_budget": args.time_budget, "model_dtype": str(dtype).split(".")[-1],
              "command": "python -m dsa.longtrain " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
              **{k: summary[k] for k in ("steps", "tokens", "seconds")}}
    if args.device.startswith("cuda"):
        record |= {"gpu": torch.cuda.get_device_name(), "gpu_seconds": summary["seconds"],
                   "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
    curve = summary["log"]
    for key in ("lm_loss", "answer_loss", "indexer_kl"):
        head, tail = curve[:10], curve[-10:]
        record[f"{key}_first"] = round(sum(r[key] for r in head) / max(len(head), 1), 4)
        record[f"{key}_last"] = round(sum(r[key] for r in tail) / max(len(tail), 1), 4)
    out = Path(args.out)
    save_adapter(model, out, lora_cfg, training=record)
    (out / "loss_curve.json").write_text(json.dumps(curve) + "\n")
    merge(model)
    model.gradient_checkpointing_disable()
    save_indexer(model, out, training=record)  # same dir: indexer.safetensors + dsa_config.json
    print(json.dumps({k: record.get(k) for k in ("steps", "tokens", "seconds", "lm_loss_first", "lm_loss_last", "answer_loss_last",
                                                 "indexer_kl_first", "indexer_kl_last", "peak_gpu_gb")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
