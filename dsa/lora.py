"""Low-rank deltas for a frozen causal LM: train them small, ship them small, merge them at load.

A trained delta is a directory with `adapter.safetensors` (per adapted linear `{module}.lora_A` [r, in] and
`{module}.lora_B` [out, r]; per RMSNorm `{module}.weight`, the whole trained vector), `adapter_config.json`
(rank, alpha, the adapted modules, the RoPE the model was trained with) and `training.json` beside them.
`load_adapter` merges W += (alpha / r) B A into the base weights once, so inference runs the plain model at
its own speed; the base model stays selectable by not loading the delta. Norms train with the LoRA because
LongLoRA found context extension needs them (embeddings too, but 28M embedding parameters would not fit
the 40 MB delta budget).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .patch import decoder_layers

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    rank: int = 32
    alpha: float = 32.0
    targets: tuple[str, ...] = TARGETS
    train_norms: bool = True
    # the RoPE the delta was trained with (config.rope_parameters) and the longest context it is meant for
    rope: dict = field(default_factory=dict)
    max_positions: int | None = None

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LoraConfig":
        d = dict(d)
        d["targets"] = tuple(d.get("targets", TARGETS))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class LoraLinear(nn.Module):
    """y = base(x) + scale * (x A^T) B^T; base frozen, A random, B zero (so training starts at the base)."""

    def __init__(self, base: nn.Linear, rank: int, scale: float):
        super().__init__()
        self.base, self.scale = base, scale
        p = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=p.device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=p.device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., in] -> [..., out]
        delta = (x.to(self.lora_A.dtype) @ self.lora_A.t()) @ self.lora_B.t()
        return self.base(x) + (delta * self.scale).to(x.dtype)


def _adapted(model: nn.Module, cfg: LoraConfig):
    """(qualified name, parent module, attribute) of every target linear inside the decoder layers."""
    for i, layer in enumerate(decoder_layers(model)):
        for sub in ("self_attn", "mlp"):
            parent = getattr(layer, sub, None)
            for t in cfg.targets:
                if parent is not None and isinstance(getattr(parent, t, None), (nn.Linear, LoraLinear)):
                    yield f"layers.{i}.{sub}.{t}", parent, t


def _norms(model: nn.Module) -> dict[str, nn.Module]:
    base = getattr(model, "model", model)
    out = {f"layers.{i}.{n}": getattr(layer, n) for i, layer in enumerate(decoder_layers(model))
           for n in ("input_layernorm", "post_attention_layernorm") if hasattr(layer, n)}
    if hasattr(base, "norm"):
        out["norm"] = base.norm
    return out


def add_lora(model: nn.Module, cfg: LoraConfig) -> list[nn.Parameter]:
    """Freeze the model, wrap every target linear with a LoraLinear; returns the trainable parameters
    (LoRA A/B in fp32, and the norms' weights when cfg.train_norms)."""
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for _, parent, attr in list(_adapted(model, cfg)):
        lin = LoraLinear(getattr(parent, attr), cfg.rank, cfg.scale)
        setattr(parent, attr, lin)
        params += [lin.lora_A, lin.lora_B]
    if cfg.train_norms:
        for norm in _norms(model).values():
            norm.weight.requires_grad_(True)
            params.append(norm.weight)
    return params


def adapter_tensors(model: nn.Module, cfg: LoraConfig) -> dict[str, torch.Tensor]:
    out = {}
    for name, parent, attr in _adapted(model, cfg):
        lin = getattr(parent, attr)
        if isinstance(lin, LoraLinear):
            out[f"{name}.lora_A"] = lin.lora_A.detach()
            out[f"{name}.lora_B"] = lin.lora_B.detach()
    if cfg.train_norms:
        out.update({f"{n}.weight": m.weight.detach() for n, m in _norms(model).items()})
    return {k: v.to(torch.bfloat16).contiguous().cpu() for k, v in out.items()}  # bf16 keeps the delta small


def save_adapter(model: nn.Module, out_dir: str | Path, cfg: LoraConfig, training: dict | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(adapter_tensors(model, cfg), str(out / "adapter.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    if training is not None:
        (out / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    return out


def read_config(adapter_dir: str | Path) -> LoraConfig:
    return LoraConfig.from_dict(json.loads((Path(adapter_dir) / "adapter_config.json").read_text()))


@torch.no_grad()
def merge_delta(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
    """w += scale * (b @ a) in place, bit for bit `(w.float() + scale * (b.float() @ a.float())).to(w.dtype)`
    with the product taken on the CPU, as load_adapter always did. An fp32 CPU weight adds the same product in
    place, without the reference's three weight-sized temporaries (the default model's delta merged in
    0.24-0.38 s instead of 0.33-0.60 s). Not `addmm_`: it was faster still but not bit-identical for every shape
    (tests/test_lora_merge.py). Other dtypes and devices go through the reference expression."""
    a, b = a.float(), b.float()
    if w.dtype != torch.float32 or w.device.type != "cpu" or a.device.type != "cpu":
        w.copy_((w.float() + scale * (b @ a).to(w.device)).to(w.dtype))
        return
    d = b @ a
    w.add_(d if scale == 1.0 else d.mul_(scale))


@torch.no_grad()
def load_adapter(model: nn.Module, adapter_dir: str | Path) -> LoraConfig:
    """Merge a saved delta into a plain (un-wrapped) model in place, and give it the delta's RoPE.
    Strict: every tensor must land, so a delta for another architecture fails loudly."""
    from .longctx import set_rope

    cfg = read_config(adapter_dir)
    tensors = load_file(str(Path(adapter_dir) / "adapter.safetensors"))
    used = set()
    for name, parent, attr in _adapted(model, cfg):
        lin = getattr(parent, attr)
        a, b = tensors.get(f"{name}.lora_A"), tensors.get(f"{name}.lora_B")
        if a is None or b is None:
            raise ValueError(f"{adapter_dir}: no LoRA weights for {name}")
        merge_delta(lin.weight, a, b, cfg.scale)
        used |= {f"{name}.lora_A", f"{name}.lora_B"}
    for name, norm in _norms(model).items():
        t = tensors.get(f"{name}.weight")
        if t is not None:
            norm.weight.copy_(t.to(device=norm.weight.device, dtype=norm.weight.dtype))
            used.add(f"{name}.weight")
    extra = set(tensors) - used
    if extra:
        raise ValueError(f"{adapter_dir}: {len(extra)} tensors fit no module of this model (e.g. {sorted(extra)[0]})")
    if cfg.rope:
        set_rope(model, cfg.rope, cfg.max_positions)
    return cfg


@torch.no_grad()
def resume(model: nn.Module, adapter_dir: str | Path) -> LoraConfig:
    """Load a saved delta into the trainable LoraLinear wrappers `add_lora` made (same targets and rank), so
    a later stage (fine-tuning on top of the context extension) keeps training the same small delta."""
    cfg = read_config(adapter_dir)
    tensors = load_file(str(Path(adapter_dir) / "adapter.safetensors"))
    for name, parent, attr in _adapted(model, cfg):
        lin = getattr(parent, attr)
        if not isinstance(lin, LoraLinear) or lin.lora_A.shape[0] != cfg.rank:
            raise ValueError(f"{adapter_dir}: {name} is not a rank-{cfg.rank} LoRA wrapper (call add_lora first)")
        lin.lora_A.copy_(tensors[f"{name}.lora_A"].float())
        lin.lora_B.copy_(tensors[f"{name}.lora_B"].float())
    for name, norm in _norms(model).items():
        if f"{name}.weight" in tensors:
            norm.weight.copy_(tensors[f"{name}.weight"].to(norm.weight.dtype))
    return cfg


def merge(model: nn.Module) -> None:
    """Fold trained LoraLinear wrappers back into plain linears (after training, before evaluation)."""
    with torch.no_grad():
        for module in list(model.modules()):
            for attr, lin in list(module.named_children()):
                if isinstance(lin, LoraLinear):
                    w = lin.base.weight
                    w.copy_((w.float() + lin.scale * (lin.lora_B @ lin.lora_A)).to(w.dtype))
                    setattr(module, attr, lin.base)
