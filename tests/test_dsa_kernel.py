"""The CPU kernel (dsa/csrc/select_attend.cpp) and the decode fast path (`select_last`) against the PyTorch
reference path (`select_chunk` + masked SDPA), at contexts many times larger than top_k."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dsa
from dsa import kernels
from dsa.attention import _block_means as block_means
from dsa.select import select_chunk, select_last
from test_dsa import FAMILIES, ids, logits, small, tiny


def test_kernel_builds():
    assert kernels.available(), kernels.build_error()


def _block_means(keys: torch.Tensor, bs: int) -> torch.Tensor:
    """[L, d] -> [nb, d], as the attention computes them without a cache."""
    return block_means(keys[None], bs)[0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_kernel_full_budget_equals_dense(family):
    """Every key within budget: the kernel's sparse path (no recorder, so no PyTorch fallback) is dense attention."""
    model = tiny(family)
    x = ids(192)
    ref = logits(model, x)
    dsa.attach(model, small(n_blocks=12, top_k=180))
    assert torch.allclose(logits(model, x), ref, atol=2e-5)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_kernel_matches_torch_path_prefill_and_decode(family, monkeypatch):
    """L = 1,536 = 64 x top_k: prefill logits and 8 decode steps agree with the PyTorch path."""
    model = tiny(family)
    dsa.attach(model, small())
    x = ids(1536 + 8)

    def run():
        cache = dsa.new_cache(model)
        with torch.no_grad():
            out = [model(x[:, :1536], **dsa.cache_arg(cache), use_cache=True).logits[:, -64:]]
            for t in range(1536, 1544):
                out.append(model(x[:, t : t + 1], **dsa.cache_arg(cache), use_cache=True).logits)
        return torch.cat(out, 1)

    fast = run()
    monkeypatch.setattr(kernels, "usable", lambda *t: False)
    ref = run()
    assert torch.allclose(fast, ref, atol=1e-4), (fast - ref).abs().max()
    dsa.set_mode(model, "dense")
    assert not torch.allclose(run(), ref, atol=1e-3)  # the comparison can fail: sparse differs from dense here


@pytest.mark.parametrize("threads,tiles", [(1, False), (3, False), (1, True), (2, True)])
@pytest.mark.parametrize("L", [40, 130, 200, 1000, 1537])
def test_kernel_selects_what_select_chunk_selects(L, threads, tiles):
    """Per query (early positions where sink and local window overlap, and late ones), the kernel attends the
    same keys as select_chunk: with one-hot values, its output reveals the attention weights per key."""
    torch.manual_seed(L)
    cfg = small()
    HI, DI, H, HKV = cfg.index_heads, cfg.index_dim, 4, 2
    keys = F.layer_norm(torch.randn(L, DI), (DI,))
    means = _block_means(keys, cfg.block_size)
    qpos = {0, 3, 17, L // 2, L - 2, L - 1}
    if tiles:  # 8 or more queries: prefill's tiles of neighbouring queries attended together
        qpos |= set(range(max(L - 20, 0), L))
    qpos = torch.tensor(sorted(qpos))
    C = len(qpos)
    qi, wi = torch.randn(C, HI, DI), torch.randn(C, HI)
    vbuf = torch.zeros(HKV, L + 7, L + 7)  # value of key t = one-hot(t): the output is the attention weights
    vbuf[:, torch.arange(L + 7), torch.arange(L + 7)] = 1
    out = torch.empty(C, H, L + 7)
    nread, _ = kernels.select_attend(qi, wi, keys, means, qpos, torch.randn(C, H, L + 7),
                                     torch.randn(HKV, L + 7, L + 7), vbuf, cfg, 0.25, out, threads=threads)
    for c in range(C):
        qp = int(qpos[c])
        sel = select_chunk(qi[c : c + 1], wi[c : c + 1], keys[: qp + 1], means, qpos[c : c + 1], cfg)
        want = set(sel.tokens[sel.mask[0]].tolist())
        got = set((out[c, 0] > 0).nonzero().flatten().tolist())
        assert got == want, (qp, sorted(got ^ want)[:10])
        assert int(nread[c]) == len(want)


@pytest.mark.parametrize("threads,tiles", [(1, False), (2, False), (3, False), (1, True), (2, True)])
@pytest.mark.parametrize("DI,D", [(32, 64), (64, 128), (16, 48)])
def test_kernel_attention_matches_sdpa(DI, D, threads, tiles):
    """The unrolled shapes of real models (and a generic one): output = SDPA over select_chunk's keys."""
    torch.manual_seed(DI + D)
    cfg = small(index_dim=DI, rope_dim=16, top_k=64, n_blocks=8)
    L, H, HKV = 2000, 6, 2
    keys = F.layer_norm(torch.randn(L, DI), (DI,))
    means = _block_means(keys, cfg.block_size)
    qpos = torch.tensor([5, 700, L - 1]) if not tiles else torch.cat([torch.arange(5, 9), torch.arange(L - 21, L)])
    C = len(qpos)
    qi, wi, query = torch.randn(C, cfg.index_heads, DI), torch.randn(C, cfg.index_heads), torch.randn(C, H, D)
    kbuf, vbuf = torch.randn(HKV, L, D), torch.randn(HKV, L, D)
    out = torch.empty(C, H, D)
    # 3 queries: each query's selection and attention split over `threads` (as in decode), then merged;
    # 25 (tiles): tiles of 8 neighbouring queries attended together (prefill), the tiles spread over threads
    kernels.select_attend(qi, wi, keys, means, qpos, query, kbuf, vbuf, cfg, D**-0.5, out, threads=threads)
    for c in range(C):
        sel = select_chunk(qi[c : c + 1], wi[c : c + 1], keys[: int(qpos[c]) + 1], means, qpos[c : c + 1], cfg)
        t = sel.tokens[sel.mask[0]]
        ref = F.scaled_dot_product_attention(query[c][None, :, None], kbuf[:, t][None], vbuf[:, t][None],
                                             scale=D**-0.5, enable_gqa=True)[0, :, 0]
        assert torch.allclose(out[c], ref, atol=1e-5), (out[c] - ref).abs().max()


@pytest.mark.parametrize("L", [300, 1000, 1537])
def test_select_last_equals_select_chunk(L):
    """The PyTorch decode fast path picks the same keys as the chunk path, and records the same picks."""
    torch.manual_seed(L)
    cfg = small()
    keys = F.layer_norm(torch.randn(L, cfg.index_dim), (cfg.index_dim,))
    means = _block_means(keys, cfg.block_size)
    q, w = torch.randn(cfg.index_heads, cfg.index_dim), torch.randn(cfg.index_heads)
    ref = select_chunk(q[None], w[None], keys, means, torch.tensor([L - 1]), cfg)
    got = select_last(q, w, keys, means, cfg, record=True)
    assert got.tokens.tolist() == ref.tokens[ref.mask[0]].tolist()
    n = int((ref.sel_idx[0] >= 0).sum())
    order = ref.sel_idx[0, :n].argsort()
    assert got.picks[0].tolist() == ref.sel_idx[0, :n][order].tolist()
    # the same scores up to float rounding: BLAS may sum a row's products in another order when it scores another
    # number of rows (MKL on an AVX-512 Xeon does: last-bit differences), so only the picks must be identical
    torch.testing.assert_close(got.pick_scores[0], ref.sel_score[0, :n][order], rtol=1e-6, atol=1e-7)
    assert set(got.blocks[0].tolist()) == set(ref.blocks[0].tolist())


def test_select_last_defers_when_sink_and_window_overlap():
    cfg = small()
    keys = torch.randn(10, cfg.index_dim)
    assert select_last(torch.randn(2, 16), torch.randn(2), keys, _block_means(keys, 16), cfg) is None


@pytest.mark.parametrize("H,HKV,D", [(6, 2, 64), (8, 2, 128), (9, 3, 64)])
def test_kernel_overlapping_tile_matches_sdpa(H, HKV, D):
    """Neighbouring queries that select nearly the same keys (as a trained indexer's do) take the kernel's
    dense tile products; each query must still attend exactly its own keys."""
    torch.manual_seed(H + D)
    cfg = small(index_dim=32, rope_dim=16, top_k=64, n_blocks=8)
    L = 3000
    keys = F.layer_norm(torch.randn(L, 32), (32,))
    means = _block_means(keys, cfg.block_size)
    qpos = torch.arange(L - 19, L)  # two full tiles of 8 and a partial one
    C = len(qpos)
    qi = torch.randn(1, cfg.index_heads, 32) + 0.01 * torch.randn(C, cfg.index_heads, 32)  # near-identical
    wi = torch.rand(1, cfg.index_heads).expand(C, -1).contiguous()
    query = torch.randn(C, H, D)
    kbuf, vbuf = torch.randn(HKV, L, D), torch.randn(HKV, L, D)
    out = torch.empty(C, H, D)
    kernels.select_attend(qi, wi, keys, means, qpos, query, kbuf, vbuf, cfg, D**-0.5, out, threads=1)
    differ = 0
    for c in range(C):
        sel = select_chunk(qi[c : c + 1], wi[c : c + 1], keys[: int(qpos[c]) + 1], means, qpos[c : c + 1], cfg)
        t = sel.tokens[sel.mask[0]]
        differ += c > 0 and set(t.tolist()) != set(prev)
        prev = t.tolist()
        ref = F.scaled_dot_product_attention(query[c][None, :, None], kbuf[:, t][None], vbuf[:, t][None],
                                             scale=D**-0.5, enable_gqa=True)[0, :, 0]
        assert torch.allclose(out[c], ref, atol=1e-5), (c, (out[c] - ref).abs().max())
    assert differ > 0  # the queries' selections are not all the same: the per-query masks matter


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("H,HKV,D,L,cap,dtype", [(9, 3, 64, 1000, 1500, torch.float32), (9, 3, 64, 1, 4, torch.float32),
                                                 (8, 2, 128, 777, 777, torch.bfloat16), (4, 4, 32, 67, 70, torch.float32)])
def test_attend_all_matches_attend_one(H, HKV, D, L, cap, dtype, threads):
    """A dense layer's CPU decode step through the kernel (every key, rows of a longer cache buffer, split over
    threads) equals the grouped matmuls it replaces."""
    from dsa.attention import _attend_one
    g = torch.Generator().manual_seed(L)
    kb, vb = (torch.randn(HKV, cap, D, generator=g).to(dtype) for _ in range(2))
    k, v = kb[:, :L], vb[:, :L]  # a cache's view: rows contiguous, heads `cap` rows apart
    q = torch.randn(H, D, generator=g)
    out = kernels.attend_all(q, k, v, D**-0.5, threads=threads)
    ref = _attend_one(q, k.float(), v.float(), D**-0.5)
    assert out is not None and torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_attend_all_refuses_what_it_cannot_read():
    q, k = torch.randn(9, 64), torch.randn(3, 100, 64)
    assert kernels.attend_all(q, k.transpose(1, 2).contiguous().transpose(1, 2), k, 0.125) is None  # strided rows
    assert kernels.attend_all(q, k, k.half(), 0.125) is None  # mixed dtypes
    assert kernels.attend_all(q.double(), k.double(), k.double(), 0.125) is None
    assert kernels.attend_all(torch.randn(8, 64), k, k, 0.125) is None  # 8 query heads over 3 KV heads
