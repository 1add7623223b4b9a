"""A model's linear layers in bfloat16 on CPUs with matrix units (Intel AMX), everything else in float32.

Why: on a 2-core Xeon with AMX-BF16, oneDNN multiplies bf16 matrices ~8x faster than float32 ([8192, 576] x
[576, 1536]: 15.5 vs 130 ms, bench/RESULTS-long.md), and the projections and MLPs are about a quarter of a
long prefill on the CPU. Only the matmuls of several rows change (prefill; a decode step's one row
stays float32, where bf16 is slower): the input is rounded to bf16, products accumulate in fp32 (oneDNN), the
output comes back in the input's dtype. Residuals, norms, RoPE, the lightning indexer (its
selections are the provenance) and the attention stay float32, so the DSA kernel still takes its float32
path. Where a CPU has no AMX, bf16 matmuls are emulated and slower than fp32: `amx_bf16()` says whether to
use them at all.
"""

from __future__ import annotations

import functools
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def amx_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (the `amx_bf16` flag of /proc/cpuinfo; Linux only)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return False
    flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return "amx_bf16" in flags.split()


def _one_row(x: torch.Tensor) -> bool:
    """A decode step: oneDNN's bf16 path costs ~2x float32 for one row (69 vs 35 us for [1, 576] x [576, 1536]
    on the AMX Xeon), where from 16 rows on it is 2-7x faster, so one-row inputs keep the float32 weights."""
    return x.shape[:-1].numel() == 1


class BF16Linear(nn.Linear):
    """nn.Linear with a bfloat16 copy of its weight (`weight_bf16`) beside the float32 one: x [..., in] (any float
    dtype) -> [..., out] in x's dtype, multiplied in bf16 (fp32 accumulation, output rounded to bf16), except
    one-row inputs, which go through the float32 weight as before."""

    weight_bf16: torch.Tensor
    bias_bf16: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _one_row(x):
            return super().forward(x)
        return F.linear(x.to(torch.bfloat16), self.weight_bf16, self.bias_bf16).to(x.dtype)


def _mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A gated MLP (gate_proj, up_proj, down_proj, act_fn: Llama, Qwen2/3, Mistral) whose three projections are
    BF16Linear: x [..., hidden] -> [..., hidden] in x's dtype. The [..., intermediate] activations stay bf16
    between the projections: down_proj would round them to bf16 anyway, and upcasting them to float32 and back
    cost more than the three matmuls on AMX (a third of an 8k prefill's non-attention time, measured)."""
    if _one_row(x):
        return type(self).forward(self, x)  # the model's own MLP, its projections on their float32 weights
    xb = x.to(torch.bfloat16)
    g, u, d = self.gate_proj, self.up_proj, self.down_proj
    h = self.act_fn(F.linear(xb, g.weight_bf16, g.bias_bf16)) * F.linear(xb, u.weight_bf16, u.bias_bf16)
    return F.linear(h, d.weight_bf16, d.bias_bf16).to(x.dtype)


def to_bf16_linears(model: nn.Module, skip: tuple[str, ...] = ("indexer", "lm_head")) -> int:
    """Give the float32 nn.Linear modules of `model` a bf16 copy of their weights and make them BF16Linear, in
    place, except those whose qualified name contains one of `skip` (the indexer, whose scores are the
    provenance; the output head, which a prefill runs on one position only); gated MLPs made of them run
    through `_mlp_forward`. The copies are taken now: weights changed later (a delta merged) are not seen.
    Costs half the linear weights' memory again (212 MB for SmolLM2-135M). Returns how many layers changed."""
    n = 0
    for name, mod in model.named_modules():
        if type(mod) is not nn.Linear or mod.weight.dtype != torch.float32 or any(s in name for s in skip):
            continue
        if mod.weight.device.type != "cpu":
            continue
        mod.weight_bf16 = mod.weight.detach().to(torch.bfloat16)  # plain attributes: not in the state dict
        mod.bias_bf16 = None if mod.bias is None else mod.bias.detach().to(torch.bfloat16)
        mod.__class__ = BF16Linear
        n += 1
    for mod in model.modules():  # gated MLPs: their activations stay bf16 (_mlp_forward)
        parts = [getattr(mod, a, None) for a in ("gate_proj", "up_proj", "down_proj")]
        if all(isinstance(p, BF16Linear) for p in parts) and callable(getattr(mod, "act_fn", None)):
            mod.forward = types.MethodType(_mlp_forward, mod)
    return n


def linear_dtype(model: nn.Module) -> str:
    """What the model's linear layers multiply in (prefill): "bfloat16" when any is a BF16Linear, else the dtype
    of the first linear weight ("float32"; "" without linear layers). For logs and cache keys."""
    for mod in model.modules():
        if isinstance(mod, BF16Linear):
            return "bfloat16"
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            return str(mod.weight.dtype).removeprefix("torch.")
    return ""
