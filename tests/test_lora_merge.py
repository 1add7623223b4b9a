"""`dsa.lora.merge_delta` (the in-place merge load_adapter uses) gives the weights the reference expression
gave, bit for bit: a faster merge must not change a single answer."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import dsa
from dsa.lora import merge_delta, read_config


def reference(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """load_adapter's merge before merge_delta: product on the CPU, fp32 sum, rounded to the weight's dtype."""
    return (w.float() + scale * (b.float() @ a.float()).to(w.device)).to(w.dtype)


@pytest.mark.parametrize("scale", [1.0, 0.5, 2 / 3, 16 / 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_matches_reference_bit_for_bit(scale, dtype):
    g = torch.Generator().manual_seed(0)
    for out, inp, rank in ((64, 48, 8), (1536, 576, 32), (7, 300, 3)):
        w = torch.randn(out, inp, generator=g).to(dtype)
        a = torch.randn(rank, inp, generator=g).to(torch.bfloat16)  # deltas ship in bf16
        b = (torch.randn(out, rank, generator=g) * 0.01).to(torch.bfloat16)
        want = reference(w, a, b, scale)
        got = w.clone()
        merge_delta(got, a, b, scale)
        assert got.dtype == dtype and torch.equal(got, want), (out, inp, rank)


def test_shipped_delta_merges_to_the_reference_weights(real_model_dir):
    """The real delta on the real base weights (what every question loads)."""
    from transformers import AutoConfig
    delta = dsa.find_delta(AutoConfig.from_pretrained(str(real_model_dir), local_files_only=True))
    if delta is None:
        pytest.skip("no shipped long-context delta for the default model")
    cfg = read_config(delta)
    tensors = load_file(str(delta / "adapter.safetensors"))
    with safe_open(str(real_model_dir / "model.safetensors"), "pt") as f:
        names = {k.removeprefix("model.").removesuffix(".weight"): k for k in f.keys()}
        merged = 0
        for name, key in names.items():
            if f"{name}.lora_A" not in tensors:
                continue
            w = f.get_tensor(key)
            a, b = tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"]
            want = reference(w, a, b, cfg.scale)
            merge_delta(w, a, b, cfg.scale)
            assert torch.equal(w, want), name
            merged += 1
    assert merged == len([k for k in tensors if k.endswith(".lora_A")]) > 0
