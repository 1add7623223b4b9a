"""The Triton kernels of the GPU path against the reference: the row top-k (`dsa.triton_topk`), the gather
attention (`dsa.triton_attend`) and `flex.prefill` built on them. On a CUDA GPU; without one they run in Triton's
CPU interpreter when `TRITON_INTERPRET=1` and Triton is installed (slow: small sizes), else they are skipped —
CI's CPU build of torch brings no Triton."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from dsa import flex, triton_attend, triton_topk
from dsa.attention import _block_means
from test_dsa_flex import _inputs, _reference_mask, attended, cfg64

if torch.cuda.is_available() and triton_topk.triton is not None:
    DEV = "cuda"
elif triton_topk.triton is not None and triton_topk.interpreting():
    DEV = "cpu"
else:
    pytest.skip("needs a CUDA GPU with Triton (or TRITON_INTERPRET=1 with Triton installed)", allow_module_level=True)


def _as_sets(idx: torch.Tensor) -> list[set]:
    return [set(r[r >= 0].tolist()) for r in idx.reshape(-1, idx.shape[-1]).cpu()]


@pytest.mark.parametrize("N,k", [(4352, 1024), (2048, 64), (100, 10), (37, 64)])
def test_topk_indices_is_torch_topk_as_a_set(N, k):
    """The k largest finite scores per row, ascending, -1 past a row's finite count; -inf never chosen."""
    g = torch.Generator().manual_seed(N)
    s = torch.randn(2, 9, N, generator=g)
    s[torch.rand(2, 9, N, generator=g) < 0.4] = float("-inf")
    s[0, 0] = float("-inf")  # nothing to choose
    s[0, 1, : N // 2] = float("-inf")  # maybe fewer than k
    got = triton_topk.topk_indices(s.to(DEV), k)
    assert got.shape == (2, 9, min(k, N))
    val, idx = s.topk(min(k, N), dim=-1)
    want = [set(i[v > float("-inf")].tolist()) for i, v in zip(idx.view(-1, idx.shape[-1]), val.view(-1, val.shape[-1]))]
    assert _as_sets(got) == want
    for row in got.view(-1, got.shape[-1]).cpu():
        n = int((row >= 0).sum())
        assert (row[n:] == -1).all() and torch.equal(row[:n], row[:n].sort().values)


def test_topk_indices_breaks_exact_ties_towards_lower_columns():
    s = torch.tensor([[1.0, 2.0, 2.0, 2.0, 3.0, -1.0, 2.0]])
    assert triton_topk.topk_indices(s.to(DEV), 3).tolist() == [[1, 2, 4]]
    assert triton_topk.topk_indices(-s.to(DEV), 2).tolist() == [[0, 5]]  # negative scores order the same way


@pytest.mark.parametrize("L,Lq,local,sink", [(1000, 1000, 128, 64), (1537, 1037, 0, 0), (700, 700, 100, 70)])
def test_block_scores_kernel_equals_torch(L, Lq, local, sink):
    """Stage 1's block scores from the Triton kernel: the reference's values (fp32 products, summed in another
    order), the same -inf pattern (not causal or forced), the same tie-break, for 2 rows and a continuation."""
    from dsa import triton_select
    from dsa.select import stage1_scores
    cfg = cfg64(local_window=local, sink_tokens=sink)
    qi, wi, keys, means = (torch.stack(t) for t in zip(*(_inputs(L, cfg, 60 + b) for b in range(2))))
    qpos = torch.arange(L - Lq, L)
    ref = stage1_scores(qi[:, -Lq:], wi[:, -Lq:], means, qpos, L, cfg)[1]
    to = lambda t: t.to(DEV)  # noqa: E731
    got = triton_select.stage1_scores(to(qi[:, -Lq:]), to(wi[:, -Lq:]), to(means), to(qpos), L, 64, sink, local).cpu()
    fin = torch.isfinite(ref)
    assert torch.equal(fin, torch.isfinite(got))
    assert torch.allclose(got[fin], ref[fin], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("L,local,sink", [(1000, 8, 4), (1537, 0, 64), (2100, 64, 70)])
def test_fused_selection_selects_what_select_chunk_selects(L, local, sink):
    """flex.select_picks with the Triton top-k (both stages) keeps select_chunk's set for every query."""
    cfg = cfg64(local_window=local, sink_tokens=sink)
    qi, wi, keys, means = _inputs(L, cfg, L)
    qpos = torch.arange(L)
    want = _reference_mask(qi, wi, keys, means, qpos, cfg)
    to = lambda t: t.to(DEV)  # noqa: E731
    _, picks = flex.select_picks(to(qi), to(wi), to(keys), to(means), to(qpos), cfg)
    got = attended(picks.cpu(), qpos, L, sink, local)
    assert (got == want).all(), (got != want).nonzero()[:5]


@pytest.mark.parametrize("local,sink", [(32, 16), (0, 64), (100, 0)])
def test_gather_attention_equals_masked_sdpa(local, sink):
    """Each query attends exactly its sink tokens, picks and local window (with itself), once each."""
    B, L, H, HKV, D = 2, 700, 9, 3, 64
    cfg = cfg64(local_window=local, sink_tokens=sink)
    rows = [_inputs(L, cfg, 40 + b) for b in range(B)]
    qi, wi, keys, means = (torch.stack(t) for t in zip(*rows))
    qpos = torch.arange(L)
    _, picks = flex.select_picks(qi, wi, keys, means, qpos, cfg)
    idx = triton_attend.key_lists(picks, qpos, sink, local)
    dtype = torch.bfloat16 if DEV == "cuda" else torch.float32
    q, k, v = (torch.randn(B, h, L, D).to(dtype) for h in (H, HKV, HKV))
    out = torch.empty(B, L, H, D, dtype=dtype, device=DEV)
    triton_attend.attend(q.to(DEV), k.to(DEV), v.to(DEV), idx.to(DEV), 0.125, out)
    for b in range(B):
        mask = _reference_mask(qi[b], wi[b], keys[b], means[b], qpos, cfg)
        listed = idx[b][idx[b] >= 0]
        assert listed.numel() == int(mask.sum())  # no key listed twice, none missing
        ref = F.scaled_dot_product_attention(q[b:b + 1].float(), k[b:b + 1].float(), v[b:b + 1].float(),
                                             attn_mask=mask[None, None], scale=0.125, enable_gqa=True)[0].transpose(0, 1)
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        assert torch.allclose(out[b].float().cpu(), ref, atol=tol), (b, (out[b].float().cpu() - ref).abs().max())


def test_prefill_gather_path_equals_flex_path(monkeypatch):
    """flex.prefill on the gather path (the inference default with Triton) gives the FlexAttention path's output
    and key count, for a continuation chunk of a longer context."""
    L, Lq, H, HKV, D = 2600, 1100, 9, 3, 64
    cfg = cfg64(n_blocks=6, top_k=96, sink_tokens=64, local_window=128)
    qi, wi, keys, means = _inputs(L, cfg, 11)
    dtype = torch.bfloat16 if DEV == "cuda" else torch.float32
    q, k, v = (torch.randn(h, n, D).to(dtype).to(DEV) for h, n in ((H, Lq), (HKV, L), (HKV, L)))
    qpos = torch.arange(L - Lq, L, device=DEV)
    to = lambda t: t.to(DEV)  # noqa: E731
    args = (q, k, v, to(qi[-Lq:]), to(wi[-Lq:]), to(keys), to(means), qpos, cfg, 0.125)
    got = torch.empty(Lq, H, D, dtype=dtype, device=DEV)
    c_got = flex.prefill(*args, got, chunk=512)
    monkeypatch.setenv("DSA_GATHER", "0")
    want = torch.empty_like(got)
    c_want = flex.prefill(*args, want)
    assert int(c_got["keys_read"]) == int(c_want["keys_read"])
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    assert torch.allclose(got.float(), want.float(), atol=tol), (got.float() - want.float()).abs().max()


@pytest.mark.skipif(DEV != "cuda", reason="the default model's shape at 32k tokens: GPU only")
def test_gather_path_at_32k_matches_reference_on_gpu():
    """At 32,768 tokens with the shipped config's budget, bf16: the gather path agrees with SDPA under the reference
    mask (computed for 256 sampled queries) except for rare near-ties at a top-k boundary."""
    L, H, HKV, D = 32768, 9, 3, 64
    cfg = cfg64(n_blocks=64, top_k=1024, sink_tokens=64, local_window=128)
    qi, wi, keys, _ = _inputs(L, cfg, 5)
    qi, keys = qi.bfloat16().float(), keys.bfloat16().float()
    means = _block_means(keys[None], 64)[0]
    q, k, v = (torch.randn(h, L, D).bfloat16() for h in (H, HKV, HKV))
    out = torch.empty(L, H, D, dtype=torch.bfloat16, device="cuda")
    cu = lambda t: t.cuda().bfloat16()  # noqa: E731
    flex.prefill(q.cuda(), k.cuda(), v.cuda(), cu(qi), wi.cuda(), cu(keys), means.cuda(), torch.arange(L, device="cuda"),
                 cfg, 0.125, out)
    sample = torch.randint(0, L, (256,), generator=torch.Generator().manual_seed(0)).sort().values
    mask = torch.stack([_reference_mask(qi[p:p + 1], wi[p:p + 1], keys, means, p[None], cfg)[0] for p in sample])
    ref = F.scaled_dot_product_attention(q[:, sample].float()[None], k.float()[None], v.float()[None],
                                         attn_mask=mask[None, None], scale=0.125, enable_gqa=True)[0].transpose(0, 1)
    bad = ((out[sample].float().cpu() - ref).abs().amax((1, 2)) > 3e-2).sum()
    assert bad <= 2, bad
