"""dsa on tiny random models of every supported family: exactness at full budget, causality and
prefill/decode consistency at contexts many times larger than top_k, the selection record, detach."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

import dsa
from dsa.indexer import index_scores
from dsa.longctx import set_context

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}


def tiny(family: str = "llama", seed: int = 0, max_pos: int = 4096):
    """4 query heads over 2 KV heads (GQA), 3 layers, random weights."""
    torch.manual_seed(seed)
    cfg_cls, model_cls = FAMILIES[family]
    kw = dict(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=max_pos)
    if family == "qwen3":
        kw["head_dim"] = 16
    if family == "mistral":
        kw["sliding_window"] = None
    model = model_cls(cfg_cls(**kw)).eval()
    model.config._attn_implementation = "sdpa"
    return model


def small(**kw) -> dsa.DSAConfig:
    base = dict(index_heads=2, index_dim=16, rope_dim=8, block_size=16, n_blocks=3, top_k=24, sink_tokens=4,
                local_window=8, query_chunk=16)
    return dsa.DSAConfig(**{**base, **kw})


def ids(L: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 101, (1, L), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model, x, **kw) -> torch.Tensor:
    return model(x, **kw).logits


@pytest.mark.parametrize("family", list(FAMILIES))
def test_full_budget_equals_dense(family):
    """sink + local + top_k cover every key, and every block is kept: the *sparse* path (gather + mask,
    not the dense shortcut) must reproduce dense attention."""
    model = tiny(family)
    x = ids(192)
    ref = logits(model, x)
    # 192 keys: 12 blocks of 16 all kept; 4 sink + 8 local + top_k 180 >= every key
    dsa.attach(model, small(n_blocks=12, top_k=180))
    calls = []
    rec = dsa.SelectionRecorder(on_select=lambda s: calls.append(s))
    with dsa.recording(model, rec):
        out = logits(model, x)
    assert len(calls) > 0  # the selection ran (sparse layers 1, 2)
    assert torch.allclose(out, ref, atol=2e-5), (out - ref).abs().max()
    dsa.detach(model)
    assert torch.equal(logits(model, x), ref)


def test_dense_shortcut_exact_when_budget_exceeds_length():
    model = tiny()
    x = ids(100)
    ref = logits(model, x)
    dsa.attach(model, small(top_k=1024, n_blocks=64))
    assert torch.allclose(logits(model, x), ref, atol=1e-5)


def test_sparse_differs_from_dense_when_budget_is_small():
    """The check above could pass by never sparsifying; here selection must actually drop keys."""
    model = tiny()
    x = ids(600)
    ref = logits(model, x)
    dsa.attach(model, small())
    out = logits(model, x)
    assert (out[0, -1] - ref[0, -1]).abs().max() > 1e-4
    assert torch.allclose(out[0, :12], ref[0, :12], atol=1e-5)  # the first queries keep every key


def test_causality_at_long_context():
    """L = 1536 is 64x top_k: changing a token may not change any earlier output or selection."""
    model = tiny()
    dsa.attach(model, small())
    x = ids(1536)
    p = 1000
    y = x.clone()
    y[0, p:] = (y[0, p:] + 7) % 101
    sels: dict[str, list] = {"x": [], "y": []}
    for name, inp in (("x", x), ("y", y)):
        with dsa.recording(model, dsa.SelectionRecorder(on_select=sels[name].append)):
            sels[name].append(logits(model, inp))
    lx, ly = sels["x"].pop(), sels["y"].pop()
    assert torch.allclose(lx[0, :p], ly[0, :p], atol=1e-5)
    assert not torch.allclose(lx[0, p:], ly[0, p:], atol=1e-3)
    for a, b in zip(sels["x"], sels["y"]):
        assert (a.idx <= a.qpos[:, None]).all()  # never a future key
        for i in (a.qpos < p).nonzero().flatten().tolist():
            assert set(a.idx[i].tolist()) == set(b.idx[i].tolist())


@pytest.mark.parametrize("weighting", ["picks", "choice", "attention"])
def test_selection_respects_budgets(weighting):
    model = tiny()
    cfg = small()
    dsa.attach(model, cfg)
    got = []
    with dsa.recording(model, dsa.SelectionRecorder(on_select=got.append, weighting=weighting)):
        logits(model, ids(800))
    assert {s.layer for s in got} == {1, 2}  # layer 0 stays dense by default
    for s in got:
        valid = s.idx >= 0
        assert not ((s.idx >= 0) & (s.idx < cfg.sink_tokens)).any()  # never the sink
        assert (s.idx <= s.qpos[:, None]).all()
        local = valid & (s.qpos[:, None] - s.idx < cfg.local_window)
        if weighting == "picks":  # the top-k picks alone: no forced key, a full top_k late in the context
            assert not local.any()
            assert (valid[s.qpos > 400].sum(-1) == cfg.top_k).all()
        elif weighting == "choice":  # picks and window compete for top_k places
            assert (valid.sum(-1) <= cfg.top_k).all() and not (s.idx == s.qpos[:, None]).any()
        else:  # everything attended but the sink, weighted by attention probability
            assert (local.sum(-1) == torch.clamp(s.qpos + 1 - cfg.sink_tokens, min=0, max=cfg.local_window)).all()
            assert torch.allclose(s.weight.sum(-1)[s.qpos > 400], torch.ones(1), atol=0.2)
            assert (s.weight[~valid] == 0).all()
        assert s.blocks.shape[1] == cfg.n_blocks
        # recorded tokens lie inside the excerpts stage 1 kept, or in forced (sink/local) blocks
        blk = torch.where(valid, s.idx // cfg.block_size, torch.full_like(s.idx, -1))
        forced = (blk < cfg.sink_tokens // cfg.block_size + 1) | (
            blk >= (s.qpos[:, None] - cfg.local_window + 1).clamp(min=0) // cfg.block_size)
        kept = (blk[:, :, None] == s.blocks[:, None, :]).any(-1)
        assert (kept | forced | ~valid).all()


@pytest.mark.parametrize("L", [100, 700, 1537])
def test_chosen_keys_are_attended(L):
    """Every key the record calls a choice is one the sparse attention read, and the forced local window
    counts only where it wins on score (so it is not the whole window)."""
    from dsa.attention import _block_means
    from dsa.select import chosen_record, select_chunk
    torch.manual_seed(L)
    cfg = small()
    keys = torch.nn.functional.layer_norm(torch.randn(L, cfg.index_dim), (cfg.index_dim,))
    means = _block_means(keys[None], cfg.block_size)[0]
    qpos = torch.tensor(sorted({L // 2, L - 2, L - 1}))
    q, w = torch.randn(len(qpos), cfg.index_heads, cfg.index_dim), torch.rand(len(qpos), cfg.index_heads)
    for c in range(len(qpos)):
        sel = select_chunk(q[c : c + 1], w[c : c + 1], keys[: int(qpos[c]) + 1], means, qpos[c : c + 1], cfg)
        idx = chosen_record(sel, qpos[c : c + 1], cfg)[0][0]
        attended = set(sel.tokens[sel.mask[0]].tolist())
        chosen = set(idx[idx >= 0].tolist())
        assert chosen <= attended
        local = {t for t in attended if 0 <= int(qpos[c]) - t < cfg.local_window and t >= cfg.sink_tokens}
        if int(qpos[c]) > cfg.top_k + cfg.sink_tokens + cfg.local_window:
            assert local - chosen  # some of the window lost the competition: forced is not chosen


@pytest.mark.parametrize("split", [1, 250, 700])
def test_prefill_then_decode_matches_full_forward(split):
    """Prefill `split` tokens (or one at a time), then feed the rest in pieces: same logits and the
    same selections as one forward over everything."""
    model = tiny()
    dsa.attach(model, small())
    x = ids(760)
    full_sel, inc_sel = [], []
    with dsa.recording(model, dsa.SelectionRecorder(on_select=full_sel.append)):
        ref = logits(model, x)
    cache = dsa.new_cache(model)
    outs = []
    with torch.no_grad(), dsa.recording(model, dsa.SelectionRecorder(on_select=inc_sel.append)):
        pieces = [(0, split)] + [(i, min(i + 37, 760)) for i in range(split, 760, 37)]
        if split == 1:  # pure token-by-token decode for the tail
            pieces = [(0, 700)] + [(i, i + 1) for i in range(700, 760)]
        for a, b in pieces:
            outs.append(model(x[:, a:b], **dsa.cache_arg(cache), use_cache=True).logits)
    inc = torch.cat(outs, 1)
    assert torch.allclose(inc, ref, atol=3e-5), (inc - ref).abs().max()

    def by_query(sels):
        return {(s.layer, int(q)): tuple(sorted(s.idx[i][s.idx[i] >= 0].tolist()))
                for s in sels for i, q in enumerate(s.qpos)}
    assert by_query(inc_sel) == by_query(full_sel)


def test_cache_crop_then_continue_matches():
    model = tiny()
    dsa.attach(model, small())
    x = ids(500)
    ref = logits(model, x)
    cache = dsa.new_cache(model)
    with torch.no_grad():
        model(x[:, :450], **dsa.cache_arg(cache), use_cache=True)
        cache.crop(333)  # e.g. a shared document prefix kept between questions
        out = model(x[:, 333:], **dsa.cache_arg(cache), use_cache=True).logits
    assert torch.allclose(out, ref[:, 333:], atol=3e-5)


def test_index_scores_formula():
    torch.manual_seed(0)
    q, w, k = torch.randn(1, 5, 3, 8), torch.randn(1, 5, 3), torch.randn(1, 7, 8)
    got = index_scores(q, w, k)
    want = torch.zeros(1, 5, 7)
    for t in range(5):
        for s in range(7):
            want[0, t, s] = sum(w[0, t, j] * torch.relu(q[0, t, j] @ k[0, s]) for j in range(3))
    assert torch.allclose(got, want, atol=1e-5)


def test_indexer_rope_is_relative():
    """Shifting every position by a constant leaves q.k unchanged (RoPE over the sub-dimension)."""
    torch.manual_seed(0)
    idx = dsa.LightningIndexer(32, small())
    x = torch.randn(1, 10, 32)
    q0, _, k0 = idx(x, torch.arange(10))
    q1, _, k1 = idx(x, torch.arange(10) + 1234)
    s0 = torch.einsum("bqhd,bkd->bqhk", q0, k0)
    s1 = torch.einsum("bqhd,bkd->bqhk", q1, k1)
    assert torch.allclose(s0, s1, atol=1e-4)


def test_attach_rejects_unsupported_and_detach_restores_config():
    model = tiny()
    before = model.config._attn_implementation
    dsa.attach(model, small())
    assert dsa.is_attached(model) and hasattr(model.model.layers[1].self_attn, "indexer")
    assert not hasattr(model.model.layers[0].self_attn, "indexer")
    dsa.detach(model)
    assert model.config._attn_implementation == before and not dsa.is_attached(model)

    class Fake(torch.nn.Module):
        config = type("C", (), {"model_type": "gpt2"})()
    with pytest.raises(ValueError, match="not supported"):
        dsa.attach(Fake())


def test_config_roundtrip_and_validation(tmp_path):
    cfg = small(n_blocks=7)
    cfg.save(tmp_path / "c.json")
    assert dsa.DSAConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError):
        dsa.DSAConfig(rope_dim=7)
    with pytest.raises(ValueError):
        dataclasses.replace(cfg, mode="fast")


def test_yarn_context_extension_and_back():
    model = tiny(max_pos=256)
    dsa.attach(model, small())
    x = ids(200)
    ref = logits(model, x)
    assert set_context(model, 600) == 2.5
    long = logits(model, ids(600))
    assert torch.isfinite(long).all()
    assert set_context(model, 200) == 1.0
    assert torch.allclose(logits(model, x), ref, atol=1e-6)


def test_indexer_weights_roundtrip(tmp_path):
    model = tiny()
    dsa.attach(model, small())
    dsa.save_indexer(model, tmp_path / "w", {"note": "test"})
    other = tiny(seed=5)
    dsa.attach(other, dsa.DSAConfig.load(tmp_path / "w" / "dsa_config.json"))
    dsa.load_indexer(other, tmp_path / "w")
    a = model.model.layers[1].self_attn.indexer.wq.weight
    b = other.model.layers[1].self_attn.indexer.wq.weight
    assert torch.allclose(a.to(torch.bfloat16).float(), b)
