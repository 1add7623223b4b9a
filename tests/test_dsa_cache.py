"""DSACache for long contexts: buffers allocated once at a known capacity (and still growing past it), K/V
stored in bfloat16 for the sparse layers (kernel and PyTorch paths agree on it), and prefill in chunks after a
cached prefix, where dense attention builds its causal mask a few queries at a time."""

from __future__ import annotations

import pytest
import torch

import dsa
from dsa import attention, kernels
from dsa.cache import GrowBuffer
from test_dsa import ids, small, tiny


def _buffers(cache: dsa.DSACache) -> list[tuple[int, int]]:
    """(storage address, rows) of every buffer the cache holds: K, V, indexer keys, block sums."""
    bufs = [b for layer in cache.layers for b in (layer._k, layer._v)]
    bufs += [b for ik in cache.index_keys if len(ik) for b in (ik.keys, ik.block_sums)]
    return [(b.buf.data_ptr(), b.buf.shape[-2]) for b in bufs]


def _run(model, x: torch.Tensor, cache, pieces: list[int]) -> torch.Tensor:
    """Feed x [1, L] in pieces of the given sizes (the rest one token at a time) -> logits [1, L, V]."""
    outs, start = [], 0
    with torch.no_grad():
        for n in pieces + [1] * (x.shape[1] - sum(pieces)):
            outs.append(model(x[:, start : start + n], **dsa.cache_arg(cache), use_cache=True).logits)
            start += n
    return torch.cat(outs, 1)


def test_capacity_is_allocated_once_and_never_moves():
    """With the final length known, every buffer has exactly that many rows from the first append, and
    neither a later prefill chunk nor decoding up to it reallocates (the old cache doubled: 256, 512, ...)."""
    model = tiny()
    dsa.attach(model, small())
    cache = dsa.new_cache(model, capacity=300)
    x = ids(300)
    _run(model, x[:, :100], cache, [100])
    first = _buffers(cache)
    nb = -(-300 // small().block_size)
    assert sorted({rows for _, rows in first}) == sorted({300, nb})  # K/V and indexer keys: 300; block sums: nb
    logits = torch.cat([_run(model, x[:, :100], dsa.new_cache(model), [100]),
                        _run(model, x[:, 100:], cache, [150])], 1)  # a second chunk, then 50 decode steps
    assert _buffers(cache) == first
    assert torch.allclose(logits, _run(model, x, dsa.new_cache(model), [300]), atol=3e-5)


def test_growing_past_capacity_keeps_every_row():
    torch.manual_seed(0)
    buf, parts = GrowBuffer(capacity=8), []
    for n in (5, 3, 1, 20, 7, 64):
        parts.append(torch.randn(1, 2, n, 4))
        buf.append(parts[-1])
    assert buf.buf.shape[-2] > 8 and torch.equal(buf.view, torch.cat(parts, 2))
    buf.reserve(500)  # one move to exactly the reserved size, rows kept
    assert buf.buf.shape[-2] == 500 and torch.equal(buf.view, torch.cat(parts, 2))

    model = tiny()
    dsa.attach(model, small())
    x = ids(400)
    small_cap = dsa.new_cache(model, capacity=20)  # outgrown by the first chunk, then again while decoding
    got = _run(model, x, small_cap, [150, 100])
    assert all(layer._k.buf.shape[-2] >= 400 for layer in small_cap.layers)
    assert torch.equal(got, _run(model, x, dsa.new_cache(model, capacity=400), [150, 100]))


def test_reserve_before_and_after_filling():
    model = tiny()
    dsa.attach(model, small())
    x = ids(300)
    cache = dsa.new_cache(model)
    cache.reserve(200)  # before the first append: allocated at 200 then
    _run(model, x[:, :150], cache, [150])
    assert {rows for _, rows in _buffers(cache)} >= {200}
    cache.reserve(300)  # after: one move to 300, what is held kept
    assert 300 in {rows for _, rows in _buffers(cache)}
    moved = _buffers(cache)
    out = _run(model, x[:, 150:], cache, [100])
    assert _buffers(cache) == moved
    assert torch.allclose(out, _run(model, x, dsa.new_cache(model), [300])[:, 150:], atol=3e-5)


def test_bf16_cache_stores_sparse_layers_in_bf16_and_paths_agree(monkeypatch):
    """K/V of the sparse layers in bf16 (the dense layer 0 and the indexer keys keep fp32): the CPU kernel and
    the PyTorch path read the same bf16 values, so they agree to fp32 rounding; against an fp32 cache the
    logits move by bf16 rounding only (on average; where the rounding flips a selection, a position moves more)."""
    model = tiny()
    dsa.attach(model, small())
    x = ids(400)

    def run(dtype):
        cache = dsa.new_cache(model, capacity=400, dtype=dtype)
        return _run(model, x, cache, [300, 60]), cache

    fast, cache = run(torch.bfloat16)
    assert cache.layers[0]._k.buf.dtype == torch.float32  # dense layer: read whole by SDPA every step
    assert {cache.layers[i]._k.buf.dtype for i in (1, 2)} == {torch.bfloat16}
    assert {cache.layers[i]._v.buf.dtype for i in (1, 2)} == {torch.bfloat16}
    assert cache.index_keys[1].keys.buf.dtype == torch.float32
    full, _ = run(None)
    assert not torch.equal(fast, full) and (fast - full).abs().mean() < 1e-3
    dsa.take_paths(model)
    if kernels.available():
        _run(model, x, dsa.new_cache(model, dtype=torch.bfloat16), [300])
        assert dsa.take_paths(model).get("kernel", 0) > 0  # the bf16 cache really went through the kernel
    monkeypatch.setattr(kernels, "usable", lambda *t: False)
    ref, _ = run(torch.bfloat16)
    assert dsa.take_paths(model).get("kernel", 0) == 0
    assert torch.allclose(fast, ref, atol=1e-4), (fast - ref).abs().max()


@pytest.mark.parametrize("path", ["flash_lse", "masks"])
@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_chunk_after_prefix_through_dense_attention_equals_one_forward(mode, path, monkeypatch):
    """A prefill chunk after a cached prefix through dense attention (layer 0, or every layer in dense mode)
    equals one forward: on the CPU by two flash calls (prefix unmasked, chunk causal) merged by their
    log-sum-exps; elsewhere (or without that op) by masks limited here to 64 entries, i.e. many SDPA calls of a
    few queries, each reading only the keys it may see."""
    model = tiny()
    dsa.attach(model, small())
    dsa.set_mode(model, mode)
    x = ids(300)
    ref = _run(model, x, dsa.new_cache(model), [300])
    calls = []
    if path == "masks":
        monkeypatch.setattr(attention, "_FLASH_LSE", None)
        monkeypatch.setattr(attention, "MASK_ELEMENTS", 64)
        real = attention.select_all_dense
        monkeypatch.setattr(attention, "select_all_dense", lambda L, qpos: calls.append(L) or real(L, qpos))
    got = _run(model, x, dsa.new_cache(model, dtype=torch.bfloat16 if mode == "dense" else None), [10, 90, 200])
    assert path == "flash_lse" or len(calls) > 10
    atol = 2e-2 if mode == "dense" else 3e-5  # dense mode here also reads a bf16 cache (upcast)
    assert torch.allclose(got, ref, atol=atol), (got - ref).abs().max()
