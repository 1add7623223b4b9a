"""The GPU prefill path (dsa/flex.py: chunked two-stage selection + FlexAttention) against the PyTorch
reference path (`select_chunk` + masked SDPA). FlexAttention runs eagerly on the CPU here, so the same code
is checked without a GPU, at contexts many times larger than top_k."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dsa
from dsa import flex, kernels
from dsa.attention import _block_means
from dsa.select import select_chunk
from test_dsa import ids, logits, small, tiny

pytest.importorskip("torch.nn.attention.flex_attention")


def cfg64(**kw) -> dsa.DSAConfig:
    """64-token blocks (the only block size the FlexAttention path takes), few kept blocks and tokens."""
    return small(**{"block_size": 64, "n_blocks": 3, "top_k": 40, **kw})


def _inputs(L: int, cfg: dsa.DSAConfig, seed: int):
    torch.manual_seed(seed)
    keys = F.layer_norm(torch.randn(L, cfg.index_dim), (cfg.index_dim,))
    means = _block_means(keys[None], cfg.block_size)[0]
    qi, wi = torch.randn(L, cfg.index_heads, cfg.index_dim), torch.randn(L, cfg.index_heads)
    return qi, wi, keys, means


def _reference_mask(qi, wi, keys, means, qpos, cfg) -> torch.Tensor:
    """[Lq, Lk] bool: what select_chunk lets each query attend."""
    sel = select_chunk(qi, wi, keys, means, qpos, cfg)
    mask = torch.zeros(len(qpos), keys.shape[0], dtype=torch.bool)
    mask[:, sel.tokens] = sel.mask
    return mask


def attended(picks: torch.Tensor, qpos: torch.Tensor, L: int, sink: int, local: int) -> torch.Tensor:
    """[C, L] bool: the picks [C, K] (-1 = none) plus the forced tokens (sink, local window, itself), causal."""
    got = torch.zeros(len(qpos), L, dtype=torch.bool)
    ok = picks >= 0
    got[torch.arange(len(qpos))[:, None].expand_as(picks)[ok], picks[ok]] = True
    t = torch.arange(L)[None, :]
    return got | ((t < sink) | (qpos[:, None] - t < local) | (t == qpos[:, None])) & (t <= qpos[:, None])


@pytest.mark.parametrize("L,local,sink", [(130, 8, 4), (1000, 8, 4), (1537, 0, 64), (1537, 100, 0), (2100, 64, 70)])
def test_flex_selects_what_select_chunk_selects(L, local, sink):
    """Per query, the picks plus the forced tokens (sink, local window, itself) are select_chunk's set."""
    cfg = cfg64(local_window=local, sink_tokens=sink)
    qi, wi, keys, means = _inputs(L, cfg, L)
    qpos = torch.arange(L)
    want = _reference_mask(qi, wi, keys, means, qpos, cfg)
    _, picks = flex.select_picks(qi, wi, keys, means, qpos, cfg)
    got = attended(picks, qpos, L, sink, local)
    assert (got == want).all(), (got != want).nonzero()[:5]
    if L >= 1000:  # the comparison is at real sparsity, not keep-everything
        assert want.sum(1).max() < L // 4


@pytest.mark.parametrize("Lq,chunk,tile", [(1537, 8192, 64), (1537, 256, 64), (300, 128, 64), (1537, 8192, 128),
                                           (300, 128, 128)])
def test_flex_prefill_equals_masked_sdpa(Lq, chunk, tile):
    """The attention output equals SDPA under select_chunk's mask, for a whole prefill and for a continuation
    (the last Lq of 1,537 positions), in one chunk of queries or several."""
    L, H, HKV, D = 1537, 4, 2, 16
    cfg = cfg64()
    qi, wi, keys, means = _inputs(L, cfg, 7)
    q, k, v = torch.randn(H, Lq, D), torch.randn(HKV, L, D), torch.randn(HKV, L, D)
    qpos = torch.arange(L - Lq, L)
    mask = _reference_mask(qi[-Lq:], wi[-Lq:], keys, means, qpos, cfg)
    ref = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask[None, None], scale=0.3,
                                         enable_gqa=True)[0].transpose(0, 1)
    out = torch.empty(Lq, H, D)
    counts = flex.prefill(q, k, v, qi[-Lq:], wi[-Lq:], keys, means, qpos, cfg, 0.3, out, chunk=chunk, tile=tile)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    assert counts["keys_read"] == int(mask.sum())
    assert counts["tiles"] <= counts["tiles_causal"]


@pytest.mark.parametrize("tile", [64, 128])
def test_flex_prefill_of_several_rows_equals_each_row(tile):
    """Rows of a training batch (same positions, different keys) in one flex.prefill call: each row's output is
    what SDPA gives under select_chunk's mask for that row's own indexer keys, and the counts add up."""
    B, L, H, HKV, D = 3, 1100, 4, 2, 16
    cfg = cfg64()
    rows = [_inputs(L, cfg, 21 + b) for b in range(B)]  # seeds without near-ties at the top-k boundary
    qi, wi, keys, means = (torch.stack(t) for t in zip(*rows))
    q, k, v = torch.randn(B, H, L, D), torch.randn(B, HKV, L, D), torch.randn(B, HKV, L, D)
    qpos = torch.arange(L)
    out = torch.empty(B, L, H, D)
    counts = flex.prefill(q, k, v, qi, wi, keys, means, qpos, cfg, 0.3, out, chunk=512, tile=tile)
    read = 0
    for b in range(B):
        mask = _reference_mask(qi[b], wi[b], keys[b], means[b], qpos, cfg)
        ref = F.scaled_dot_product_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], attn_mask=mask[None, None],
                                             scale=0.3, enable_gqa=True)[0].transpose(0, 1)
        assert torch.allclose(out[b], ref, atol=1e-5), (b, (out[b] - ref).abs().max())
        read += int(mask.sum())
    assert counts["keys_read"] == read
    _, picks = flex.select_picks(qi, wi, keys, means, qpos, cfg)  # [B, C, K]: row b's picks are its own call's
    assert torch.equal(picks[1], flex.select_picks(qi[1], wi[1], keys[1], means[1], qpos, cfg)[1])


def test_model_batch_on_flex_path_matches_one_row_at_a_time(monkeypatch):
    """A batch of 2 sequences through a whole model on the flex path (one call per layer for both rows) gives the
    logits of each sequence run alone."""
    model = tiny("llama")
    dsa.attach(model, cfg64())
    x = torch.cat([ids(1100, seed=3), ids(1100, seed=4)])
    monkeypatch.setattr(kernels, "usable", lambda *t: False)
    calls = []
    monkeypatch.setattr(flex, "usable", lambda q, cfg: calls.append(q.shape[0]) or q.shape[2] > 1)
    both = logits(model, x)
    assert calls and max(calls) == 2  # the rows went through together
    for b in range(2):
        assert torch.allclose(both[b], logits(model, x[b:b + 1])[0], atol=1e-4), b


def test_model_on_flex_path_matches_torch_path(monkeypatch):
    """A whole model whose sparse prefill goes through dsa/flex.py gives the PyTorch path's logits. The two paths
    sum indexer scores in different orders, so a near-tie at a top-k boundary (5e-7 apart, as seed 1 has at
    one query) may pick differently; the selection tests above compare the sets exactly."""
    model = tiny("llama")
    dsa.attach(model, cfg64())
    x = ids(1536, seed=2)
    monkeypatch.setattr(kernels, "usable", lambda *t: False)
    ref = logits(model, x, **dsa.cache_arg(dsa.new_cache(model)), use_cache=True)
    calls = []
    monkeypatch.setattr(flex, "usable", lambda q, cfg: calls.append(q.shape[2]) or q.shape[2] > 1)
    got = logits(model, x, **dsa.cache_arg(dsa.new_cache(model)), use_cache=True)
    assert calls and max(calls) == 1536
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled FlexAttention)")
def test_compiled_flex_on_gpu_equals_masked_sdpa(monkeypatch):
    """On a GPU the compiled FlexAttention kernel (bf16, the default model's head shape) matches SDPA in fp32
    under select_chunk's mask, at 8,192 tokens = 32 x top_k. (Inference takes the gather kernel by default:
    `DSA_GATHER=0` keeps this on the FlexAttention path training uses; tests/test_dsa_triton.py checks the other.)"""
    monkeypatch.setenv("DSA_GATHER", "0")
    L, H, HKV, D = 8192, 9, 3, 64
    cfg = cfg64(n_blocks=16, top_k=256, sink_tokens=64, local_window=128)
    qi, wi, keys, _ = _inputs(L, cfg, 3)
    qi, keys = qi.bfloat16().float(), keys.bfloat16().float()  # the reference selects from the same bf16 values
    means = _block_means(keys[None], cfg.block_size)[0]
    q, k, v = (torch.randn(*s).bfloat16().float() for s in ((H, L, D), (HKV, L, D), (HKV, L, D)))
    qpos = torch.arange(L)
    mask = _reference_mask(qi, wi, keys, means, qpos, cfg).cuda()
    ref = F.scaled_dot_product_attention(q[None].cuda(), k[None].cuda(), v[None].cuda(), attn_mask=mask[None, None],
                                         scale=0.125, enable_gqa=True)[0].transpose(0, 1)
    cu = lambda t: t.cuda().bfloat16()  # noqa: E731
    out = torch.empty(L, H, D, device="cuda", dtype=torch.bfloat16)
    counts = flex.prefill(cu(q), cu(k), cu(v), cu(qi), wi.cuda(), cu(keys), means.cuda(), qpos.cuda(), cfg, 0.125, out)
    bad = ((out.float() - ref).abs().amax((1, 2)) > 3e-2).sum()
    assert bad <= L // 1000  # a rare near-tie may pick differently (scores summed in another order)
    assert counts["keys_read"] == int(mask.sum())
    assert counts["tiles"] < counts["tiles_causal"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton)")
def test_triton_stage2_scores_equal_torch():
    """The Triton stage-2 kernel scores and masks every candidate token as the PyTorch ops do, for two rows of a
    batch in one launch (each row reading its own keys) and for one row alone."""
    from dsa import triton_select
    L = 4100
    cfg = cfg64(n_blocks=8, top_k=128, sink_tokens=70, local_window=100)
    qi, wi, keys, means = (torch.stack(t).cuda() for t in zip(*(_inputs(L, cfg, 5 + b) for b in range(2))))
    qpos = torch.arange(L, device="cuda")
    blocks, _ = flex.select_picks(qi, wi, keys, means, qpos, cfg)  # [2, L, n_blocks]
    forced = flex.forced_slots(qpos, cfg)
    slots = torch.cat([blocks, forced.expand(2, *forced.shape)], -1)
    ref = flex._stage2_torch(qi.float(), wi.float(), keys, slots, qpos, cfg)
    got = triton_select.stage2_scores(qi, wi, keys, slots, qpos, 64, cfg.sink_tokens, cfg.local_window)
    fin = torch.isfinite(ref)
    assert (fin == torch.isfinite(got)).all()
    assert torch.allclose(got[fin], ref[fin], atol=1e-4, rtol=1e-4)
    one = triton_select.stage2_scores(qi[1], wi[1], keys[1], slots[1], qpos, 64, cfg.sink_tokens, cfg.local_window)
    assert torch.equal(one, got[1])
