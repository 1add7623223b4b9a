"""Turn a Hugging Face causal LM into a DSA model and back.

Like transformers' own attention backends, DSA is an attention function registered under a name; the
model's attention modules keep their projections, norms and RoPE. Each sparse layer's attention module
gains an `indexer` submodule, and a forward pre-hook hands the indexer the layer's normalised input.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from transformers import AttentionInterface

from .attention import DSAState, dsa_attention
from .cache import DSACache
from .config import DSAConfig
from .indexer import LightningIndexer
from .record import SelectionRecorder

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")
AttentionInterface.register("dsa", dsa_attention)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers found (supported: {', '.join(SUPPORTED)})")
    return layers


def _capture_inputs(module: nn.Module, args: tuple, kwargs: dict) -> None:
    x = args[0] if args else kwargs["hidden_states"]
    module.dsa_state.inputs[module.dsa_layer] = (x, kwargs.get("cache", kwargs.get("past_key_values")))


def attach(model: nn.Module, config: DSAConfig | None = None) -> nn.Module:
    """Add indexers (randomly initialised; see `dsa.weights.load_indexer`) and switch attention to DSA."""
    if is_attached(model):
        detach(model)
    config = config or DSAConfig()
    mtype = getattr(model.config, "model_type", "?")
    if mtype not in SUPPORTED:
        raise ValueError(f"model type {mtype!r} is not supported by dsa (supported: {', '.join(SUPPORTED)})")
    state = DSAState(config)
    param = next(model.parameters())
    hidden = model.config.hidden_size
    for i, layer in enumerate(decoder_layers(model)):
        attn = layer.self_attn
        attn.dsa_state, attn.dsa_layer = state, i
        if config.is_sparse_layer(i):
            attn.indexer = LightningIndexer(hidden, config).to(device=param.device, dtype=param.dtype)
        attn._dsa_hook = attn.register_forward_pre_hook(_capture_inputs, with_kwargs=True)
    model.dsa_state = state
    model._dsa_previous_attn = model.config._attn_implementation
    model.set_attn_implementation("dsa")
    return model


def detach(model: nn.Module) -> nn.Module:
    """Remove indexers and hooks; restore the attention implementation the model had."""
    if not is_attached(model):
        return model
    for layer in decoder_layers(model):
        attn = layer.self_attn
        attn._dsa_hook.remove()
        for name in ("indexer", "dsa_state", "dsa_layer", "_dsa_hook"):
            if hasattr(attn, name):
                delattr(attn, name)
    model.set_attn_implementation(model._dsa_previous_attn or "sdpa")
    del model.dsa_state, model._dsa_previous_attn
    return model


def is_attached(model: nn.Module) -> bool:
    return hasattr(model, "dsa_state")


def new_cache(model: nn.Module, capacity: int | None = None, dtype: torch.dtype | None = None) -> DSACache:
    """A fresh cache for prefill + decode with a DSA model. capacity: the final length when known (prompt + most
    new tokens), so every buffer is allocated once; dtype: how the sparse layers store K/V (e.g. torch.bfloat16,
    half of fp32's memory; None: the model's dtype). The dense layers keep the model's dtype (see dsa.cache)."""
    cfg = model.dsa_state.config
    return DSACache(model.config.num_hidden_layers, cfg.block_size, capacity, dtype, cfg.dense_layers)


@contextmanager
def recording(model: nn.Module, recorder: SelectionRecorder):
    """Within the block, every sparse layer reports its selections to `recorder`."""
    state: DSAState = model.dsa_state
    previous, state.recorder = state.recorder, recorder
    try:
        yield recorder
    finally:
        state.recorder = previous


@contextmanager
def profiling(model: nn.Module):
    """Within the block, accumulate seconds spent in indexer / selection / attention into a dict, and, as part of
    attention, in the dense layers' attention ("attention_dense_layers")."""
    state: DSAState = model.dsa_state
    state.timings = {}
    try:
        yield state.timings
    finally:
        state.timings = None


def indexer_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for layer in decoder_layers(model) if hasattr(layer.self_attn, "indexer")
            for p in layer.self_attn.indexer.parameters()]


def use_reference(model: nn.Module, on: bool = True) -> None:
    """Run every query through the reference path (`select.select_chunk` + SDPA): no CPU kernel, no GPU kernels,
    no decode fast path. `DSA_REFERENCE=1` does the same for every model."""
    model.dsa_state.reference = on


def take_paths(model: nn.Module) -> dict[str, int]:
    """Queries served by each path since the last call (kernel / flex / torch / dense, summed over sparse
    layers) and the CPU kernel's own counts; resets them."""
    state: DSAState = model.dsa_state
    paths, state.paths = state.paths, {}
    return paths


@torch.no_grad()
def set_mode(model: nn.Module, mode: str) -> None:
    """Switch between "sparse" attention and "dense" attention (indexer still runs for recording)."""
    model.dsa_state.config.mode = mode
