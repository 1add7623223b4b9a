"""Linear layers in bf16 on AMX CPUs (dsa.bf16_linear, docreader.models.matmul_dtype): only the projections and
MLPs change, the indexer and the output head stay float32, the DSA kernel still gets float32 tensors, and the
logits stay within bf16 rounding of the float32 model's."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import dsa
from dsa import bf16_linear, kernels
from dsa.bf16_linear import BF16Linear, linear_dtype, to_bf16_linears

from test_dsa import ids, small, tiny


def test_bf16_linear_is_float32_within_bf16_rounding():
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    x = torch.randn(5, 7, 96)
    want = lin(x)
    n = to_bf16_linears(nn.Sequential(lin))
    got = lin(x)
    assert n == 1 and type(lin) is BF16Linear and lin.weight_bf16.dtype == torch.bfloat16 and lin.bias_bf16.dtype == torch.bfloat16
    assert lin.weight.dtype == torch.float32 and "weight_bf16" not in lin.state_dict()
    assert got.dtype == torch.float32 and got.shape == want.shape
    # bf16 inputs and weights (8-bit mantissas), fp32 accumulation, output rounded to bf16
    ref = nn.functional.linear(x.bfloat16().double(), lin.weight_bf16.double(), lin.bias_bf16.double())
    assert torch.allclose(got.double(), ref, rtol=1e-2, atol=1e-2)
    assert torch.allclose(got, want, rtol=5e-2, atol=5e-2) and not torch.equal(got, want)
    # one row (a decode step) stays on the float32 weight, bit for bit
    assert torch.equal(lin(x[:1, :1]), nn.functional.linear(x[:1, :1], lin.weight, lin.bias))


def test_skips_indexer_and_head_and_counts():
    model = tiny("llama")
    dsa.attach(model, small())
    n = to_bf16_linears(model)
    layers = model.config.num_hidden_layers
    assert n == 7 * layers  # q, k, v, o, gate, up, down
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            kept = "indexer" in name or "lm_head" in name
            assert (type(mod) is nn.Linear) == kept and mod.weight.dtype == torch.float32, name
    assert linear_dtype(model) == "bfloat16"
    assert to_bf16_linears(model) == 0  # converted once


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_model_logits_close_and_selection_path_kept(family):
    """The attention and the indexer still see float32 tensors: a CPU prefill takes the same kernel path, and
    the logits move by bf16 rounding only."""
    x = ids(300)
    model = tiny(family)
    dsa.attach(model, small())
    with torch.no_grad():
        want = model(x).logits
    dsa.take_paths(model)
    to_bf16_linears(model)
    with torch.no_grad():
        got = model(x).logits
    paths = dsa.take_paths(model)
    assert got.dtype == torch.float32
    assert (paths.get("kernel", 0) > 0) == kernels.available(), paths
    err = (got - want).abs().max() / want.abs().max()
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean()
    assert 0 < err < 0.15 and agree > 0.9, (float(err), float(agree))
    with torch.no_grad():  # a one-row forward (a decode step's shape) is the float32 model's, MLPs included
        one = model(x[:, :1]).logits
    ref = tiny(family)
    dsa.attach(ref, small())
    with torch.no_grad():
        assert torch.equal(one, ref(x[:, :1]).logits)


def test_amx_flag_read_from_cpuinfo(monkeypatch, tmp_path):
    bf16_linear.amx_bf16.cache_clear()
    try:
        for flags, want in (("fpu avx2 avx512f amx_bf16 amx_tile", True), ("fpu avx2 avx512_bf16", False),
                            ("fpu avx512f amx_tile amx_int8", False)):
            f = tmp_path / "cpuinfo"
            f.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
            monkeypatch.setattr(bf16_linear, "CPUINFO", f)
            bf16_linear.amx_bf16.cache_clear()
            assert bf16_linear.amx_bf16() is want
    finally:
        bf16_linear.amx_bf16.cache_clear()


def test_matmul_dtype_choice(monkeypatch):
    from docreader import models
    from docreader.errors import DocreaderError
    for amx in (True, False):
        monkeypatch.setattr(bf16_linear, "amx_bf16", lambda amx=amx: amx)
        monkeypatch.delenv(models.MATMUL_ENV, raising=False)
        assert models.matmul_dtype("cpu") == "float32"  # opt-in only: bf16 breaks exact cache/chunk agreement
        monkeypatch.setenv(models.MATMUL_ENV, "auto")
        assert models.matmul_dtype("cpu") == ("bfloat16" if amx else "float32")
        assert models.matmul_dtype("cuda") == "float32"
        for forced in ("float32", "bfloat16"):
            monkeypatch.setenv(models.MATMUL_ENV, forced)
            assert models.matmul_dtype("cpu") == forced
    monkeypatch.setenv(models.MATMUL_ENV, "fp8")
    with pytest.raises(DocreaderError, match="DOCREADER_MATMUL"):
        models.matmul_dtype("cpu")


def test_load_applies_the_choice(monkeypatch, tmp_path):
    """docreader.models.load converts the linear layers only when asked, and says so in `matmul` (which the log
    and the document cache key record)."""
    from docreader import models
    from test_langchain_support import tiny_model_dir
    path = str(tiny_model_dir(tmp_path))
    monkeypatch.delenv(models.MATMUL_ENV, raising=False)
    plain = models.load(path)
    assert plain.matmul == "float32" and not any(isinstance(m, BF16Linear) for m in plain.model.modules())
    monkeypatch.setenv(models.MATMUL_ENV, "bfloat16")
    lm = models.load(path)
    assert lm.matmul == "bfloat16" and sum(isinstance(m, BF16Linear) for m in lm.model.modules()) == 7 * 2
