"""Indexer weights: save, load, and find the ones shipped for known models.

A weights directory holds `indexer.safetensors` (keys `layers.{i}.{param}`), `dsa_config.json` and
`training.json` (how they were made). Shipped directories live in `dsa/weights/<name>/` and are matched
to a model by the fingerprint of its architecture shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import DSAConfig
from .patch import decoder_layers

SHIPPED = Path(__file__).parent / "weights"


def fingerprint(model_config) -> str:
    """Architecture shape: indexer weights fit any model with the same one (e.g. base and instruct)."""
    c = model_config
    return (f"{c.model_type}-L{c.num_hidden_layers}-h{c.hidden_size}-H{c.num_attention_heads}"
            f"-kv{c.num_key_value_heads}-v{c.vocab_size}")


def save_indexer(model: nn.Module, out_dir: str | Path, training: dict | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, layer in enumerate(decoder_layers(model)):
        if hasattr(layer.self_attn, "indexer"):
            for name, t in layer.self_attn.indexer.state_dict().items():
                tensors[f"layers.{i}.{name}"] = t.detach().to(torch.bfloat16).contiguous().cpu()  # bf16 keeps shipped files small
    save_file(tensors, str(out / "indexer.safetensors"))
    model.dsa_state.config.save(out / "dsa_config.json")
    meta = {"fingerprint": fingerprint(model.config), **(training or {})}
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_indexer(model: nn.Module, weights_dir: str | Path) -> None:
    """Load indexer weights into an attached model (strict: every sparse layer must be covered)."""
    tensors = load_file(str(Path(weights_dir) / "indexer.safetensors"))
    for i, layer in enumerate(decoder_layers(model)):
        if not hasattr(layer.self_attn, "indexer"):
            continue
        idx = layer.self_attn.indexer
        prefix = f"layers.{i}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not sd:
            raise ValueError(f"{weights_dir}: no indexer weights for layer {i}")
        p = next(idx.parameters())
        idx.load_state_dict({k: v.to(device=p.device, dtype=p.dtype) for k, v in sd.items()})


def _shipped(model_config, delta: bool) -> list[Path]:
    fp = fingerprint(model_config)
    return [meta.parent for meta in sorted(SHIPPED.glob("*/training.json"))
            if json.loads(meta.read_text()).get("fingerprint") == fp
            and (meta.parent / "adapter.safetensors").exists() == delta]


def find_shipped(model_config) -> Path | None:
    """The shipped indexer directory for the base model of this shape, if any (no delta beside it)."""
    found = _shipped(model_config, delta=False)
    return found[0] if found else None


def find_delta(model_config) -> Path | None:
    """The shipped delta for this shape: a directory with a LoRA adapter (dsa.lora) and the indexer re-trained
    on the adapted model, both with their training record."""
    found = _shipped(model_config, delta=True)
    return found[0] if found else None
