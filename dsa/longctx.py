"""Run past a model's native window with YaRN RoPE scaling.

The model's rotary module is rebuilt from a copy of its config with `rope_type="yarn"` and the smallest
factor that covers the requested length; `native` lengths keep the original RoPE untouched, so short
inputs are computed exactly as before. The indexer's own RoPE is relative and unscaled.
"""

from __future__ import annotations

import copy
import math

from torch import nn


def _base(model: nn.Module) -> nn.Module:
    return getattr(model, "model", model)


def native_window(model: nn.Module) -> int:
    cfg = model.config
    original = getattr(cfg, "_dsa_native_window", None)
    return int(original or cfg.max_position_embeddings)


def set_context(model: nn.Module, tokens: int) -> float:
    """Make positions up to `tokens` valid; returns the YaRN factor in use (1.0 = native RoPE)."""
    base = _base(model)
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        raise ValueError(f"{type(model).__name__}: no rotary embedding to scale")
    cfg = model.config
    if not hasattr(cfg, "_dsa_native_window"):
        cfg._dsa_native_window = cfg.max_position_embeddings
        cfg._dsa_native_rope = copy.deepcopy(getattr(cfg, "rope_parameters", None))
    native = cfg._dsa_native_window
    factor = 1.0 if tokens <= native else float(math.ceil(2 * tokens / native)) / 2  # steps of 0.5
    current = getattr(rotary, "_dsa_factor", 1.0)
    if factor == current:
        return factor
    new_cfg = copy.deepcopy(cfg)
    rope = dict(cfg._dsa_native_rope or {"rope_theta": getattr(cfg, "rope_theta", 10000.0)})
    if factor > 1.0:
        rope.update({"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": native})
        new_cfg.max_position_embeddings = int(native * factor)
    else:
        new_cfg.max_position_embeddings = native
    new_cfg.rope_parameters = rope
    device = rotary.inv_freq.device
    new_rotary = type(rotary)(new_cfg).to(device)
    new_rotary._dsa_factor = factor
    base.rotary_emb = new_rotary
    return factor
