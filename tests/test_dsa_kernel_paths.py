"""The CPU kernel's paths, each reached and checked against the reference (select_chunk + SDPA): every ISA
build this CPU can run (AVX-512, AVX2, scalar), with float32 and bfloat16 K/V buffers, the dense tile products,
and thread teams smaller than asked for (OMP_DYNAMIC / OMP_THREAD_LIMIT), which once left whole prefill tiles
unwritten."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dsa import kernels
from dsa.attention import _block_means
from dsa.select import select_chunk
from test_dsa import small

HERE = Path(__file__).parent


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def check(threads: int, overlap: bool, seed: int = 0, kv: str = "float32") -> dict:
    """Kernel vs reference on 19 prefill queries (tiles of 8) and 3 decode-sized calls; -> max error, stats.
    kv: the K/V buffers' dtype; the reference attends the same values upcast (bf16 -> fp32 is exact), so the
    tolerance is float32's whatever the storage."""
    torch.manual_seed(seed)
    cfg = small(index_dim=32, rope_dim=16, top_k=64, n_blocks=8)
    L, H, HKV, D = 3000, 6, 2, 64
    keys = F.layer_norm(torch.randn(L, 32), (32,))
    means = _block_means(keys[None], cfg.block_size)[0]
    kbuf, vbuf = torch.randn(HKV, L, D).to(getattr(torch, kv)), torch.randn(HKV, L, D).to(getattr(torch, kv))
    kref, vref = kbuf.float(), vbuf.float()
    stats: dict = {}
    err = 0.0
    for qpos in (torch.arange(L - 75, L), torch.tensor([L - 1]), torch.tensor([1500]), torch.tensor([40])):
        C = len(qpos)
        if overlap:  # near-identical neighbours, as a trained indexer's: the dense tile products
            qi = torch.randn(1, cfg.index_heads, 32) + 0.01 * torch.randn(C, cfg.index_heads, 32)
            wi = torch.rand(1, cfg.index_heads).expand(C, -1).contiguous()
        else:
            qi, wi = torch.randn(C, cfg.index_heads, 32), torch.randn(C, cfg.index_heads)
        query = torch.randn(C, H, D)
        out = torch.full((C, H, D), float("nan"))  # poisoned: a query the kernel skips stays NaN
        kernels.select_attend(qi, wi, keys, means, qpos, query, kbuf, vbuf, cfg, D**-0.5, out, threads=threads,
                              stats=stats)
        for c in range(C):
            sel = select_chunk(qi[c : c + 1], wi[c : c + 1], keys[: int(qpos[c]) + 1], means, qpos[c : c + 1], cfg)
            t = sel.tokens[sel.mask[0]]
            ref = F.scaled_dot_product_attention(query[c][None, :, None], kref[:, t][None], vref[:, t][None],
                                                 scale=D**-0.5, enable_gqa=True)[0, :, 0]
            e = (out[c] - ref).abs().max().item()
            err = max(err, e if e == e else float("inf"))
    return {"err": err, "isa": kernels.isa(), "openmp": kernels.openmp(), **stats}


def run_isolated(env: dict, threads: int, overlaps: tuple[bool, ...] = (False,),
                 kvs: tuple[str, ...] = ("float32",)) -> list[dict]:
    """`check` in a fresh process, so the environment reaches OpenMP and the kernel build; one result per
    (overlap, K/V dtype)."""
    code = (f"import json, test_dsa_kernel_paths as t; "
            f"print(json.dumps([t.check({threads}, o, kv=kv) for o in {overlaps!r} for kv in {kvs!r}]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=HERE, env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("env", [{"OMP_THREAD_LIMIT": "1"}, {"OMP_DYNAMIC": "true", "OMP_THREAD_LIMIT": "2"}])
def test_kernel_writes_every_output_when_openmp_grants_fewer_threads(env):
    """Asking for 4 threads where the runtime grants fewer: every tile is still attended, every decode split
    merged (the old kernel dealt tiles by the requested count and left 3 of 4 unwritten)."""
    if not kernels.openmp():
        pytest.skip(f"kernel built without OpenMP ({kernels.describe()})")
    [got] = run_isolated(env, threads=4)
    assert got["threads"] < 4  # the runtime really granted fewer than asked
    assert got["err"] < 1e-4, got


@pytest.mark.parametrize("isa", ["native", "avx2", "scalar"])
def test_each_isa_build_matches_reference(isa, tmp_path):
    """Every build this CPU can run attends what the reference attends, on both tile paths and decode, with
    float32 and bfloat16 K/V buffers (bf16 rows converted by that build's vector or scalar loads)."""
    if isa == "avx2" and not {"avx2", "fma"} <= _cpu_flags():
        pytest.skip("this CPU has no AVX2/FMA")
    if not kernels.on_x86() and isa != "native":
        pytest.skip("ISA switches are x86 only")
    env = {"DSA_KERNEL_ISA": isa} | ({} if isa == "native" else {"DSA_KERNEL_DIR": str(tmp_path)})
    for got in run_isolated(env, threads=2, overlaps=(False, True), kvs=("float32", "bfloat16")):
        assert got["err"] < 1e-4, got
        if isa != "native":
            assert got["isa"] == isa, got
        assert got["decoded"] == 3 and got["tiles_dense"] + got["tiles_sparse"] == 10, got


@pytest.mark.parametrize("kv", ["float32", "bfloat16"])
def test_dense_tile_path_is_reached(kv):
    """Overlapping neighbours take the dense tile products where the build has vector paths (the test that
    aims at them must reach them), scattered ones the row-by-row tiles."""
    if kernels.isa() == "scalar":
        pytest.skip("scalar build: no dense tile path (kernel built without AVX2/AVX-512)")
    dense = check(threads=1, overlap=True, kv=kv)
    assert dense["err"] < 1e-4 and dense["tiles_dense"] > 0, dense
    scattered = check(threads=1, overlap=False, kv=kv)
    assert scattered["err"] < 1e-4 and scattered["tiles_sparse"] > 0 and scattered["tiles_dense"] == 0, scattered


def test_flag_sets_are_portable(monkeypatch):
    """x86 flags are never tried first on another architecture, and a portable set always comes last."""
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    sets = kernels.flag_sets()
    assert not any("-mprefer-vector-width=512" in s or "-mno-avx512f" in s for s in sets)
    assert sets[0][-1] == "-mcpu=native" and sets[-1] == kernels.BASE
    monkeypatch.setenv("DSA_KERNEL_ISA", "avx9")
    with pytest.raises(RuntimeError, match="DSA_KERNEL_ISA"):
        kernels.flag_sets()
