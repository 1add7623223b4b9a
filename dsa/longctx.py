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


def _remember_native(cfg) -> None:
    if not hasattr(cfg, "_dsa_native_window"):
        cfg._dsa_native_window = cfg.max_position_embeddings
        cfg._dsa_native_rope = copy.deepcopy(getattr(cfg, "rope_parameters", None))


def _rebuild_rotary(model: nn.Module, rope: dict, max_positions: int, factor: float) -> None:
    base = _base(model)
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        raise ValueError(f"{type(model).__name__}: no rotary embedding to scale")
    new_cfg = copy.deepcopy(model.config)
    new_cfg.rope_parameters = rope
    new_cfg.max_position_embeddings = max_positions
    new_rotary = type(rotary)(new_cfg).to(rotary.inv_freq.device)
    new_rotary._dsa_factor = factor
    base.rotary_emb = new_rotary


def set_rope(model: nn.Module, rope: dict, max_positions: int | None = None) -> None:
    """Fix the model's RoPE to `rope` (the parameters a long-context delta was trained with) for every
    length: `set_context` then only checks the length. Short prompts use the same RoPE the delta learnt."""
    cfg = model.config
    _remember_native(cfg)
    factor = float(rope.get("factor", 1.0))
    max_positions = int(max_positions or cfg._dsa_native_window * factor)
    _rebuild_rotary(model, dict(rope), max_positions, factor)
    cfg._dsa_fixed_rope = (dict(rope), max_positions)


def fixed_window(model: nn.Module) -> int | None:
    """The longest context a fixed (trained) RoPE is meant for, or None when RoPE scales per length."""
    fixed = getattr(model.config, "_dsa_fixed_rope", None)
    return fixed[1] if fixed else None


def set_context(model: nn.Module, tokens: int) -> float:
    """Make positions up to `tokens` valid; returns the YaRN factor in use (1.0 = native RoPE)."""
    fixed = getattr(model.config, "_dsa_fixed_rope", None)
    if fixed is not None:
        return float(fixed[0].get("factor", 1.0))
    base = _base(model)
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        raise ValueError(f"{type(model).__name__}: no rotary embedding to scale")
    cfg = model.config
    _remember_native(cfg)
    native = cfg._dsa_native_window
    factor = 1.0 if tokens <= native else float(math.ceil(2 * tokens / native)) / 2  # steps of 0.5
    current = getattr(rotary, "_dsa_factor", 1.0)
    if factor == current:
        return factor
    _rebuild_rotary(model, yarn(cfg, factor), int(native * factor), factor)
    return factor


def yarn(cfg, factor: float) -> dict:
    """The model's native rope parameters, with YaRN at `factor` over its native window when factor > 1."""
    _remember_native(cfg)
    rope = dict(cfg._dsa_native_rope or {"rope_theta": getattr(cfg, "rope_theta", 10000.0)})
    if factor > 1.0:
        rope.update({"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": cfg._dsa_native_window})
    return rope
