"""dsa.longtrain on a tiny random Llama (CPU, seconds): the LM loss reaches LoRA through the sparse attention
and never the indexer; the indexer's KL reaches only the indexer; a saved delta reloads into a fresh model."""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F

import dsa
from dsa import longtrain as LT
from dsa.lora import LoraConfig, LoraLinear, load_adapter, merge, save_adapter
from dsa.patch import decoder_layers
from tests.test_train import small_cfg, tiny_model

L = 160  # > the budget (4 sink + 8 local + 32 picks): the sparse path really drops keys


def prepared(rank: int = 4):
    model = tiny_model()
    lora_cfg = LoraConfig(rank=rank, alpha=8.0)
    lora, idx = LT.prepare(model, small_cfg(), lora_cfg, None, seed=0)
    return model, lora_cfg, lora, idx


def _grads(params) -> float:
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


def test_lm_loss_flows_into_lora_not_indexer():
    model, _, lora, idx = prepared()
    with torch.no_grad():  # B starts at zero: give it values so A's gradient is non-zero too
        for p in lora:
            if p.dim() == 2:
                p.normal_(0, 0.02)
    ids = torch.randint(0, 97, (1, L), generator=torch.Generator().manual_seed(0))
    hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
    loss, parts = LT.lm_loss(model, hidden, ids, torch.zeros_like(ids, dtype=torch.bool), chunk=50)
    loss.backward()
    assert _grads(lora) > 0
    assert _grads(idx) == 0  # the indexer never learns through attention
    # the chunked, checkpointed loss is plain mean cross-entropy
    ref = F.cross_entropy(model.lm_head(hidden[0, :-1]).float(), ids[0, 1:])
    assert torch.allclose(loss, ref, atol=1e-5) and float(parts[1]) == 0.0


def test_training_forward_is_sparse():
    """The LM loss depends on what the selection drops: sparse and dense forwards differ."""
    model, *_ = prepared()
    ids = torch.randint(0, 97, (1, L), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sparse = model.model(input_ids=ids, use_cache=False).last_hidden_state
        dsa.set_mode(model, "dense")
        dense = model.model(input_ids=ids, use_cache=False).last_hidden_state
        dsa.set_mode(model, "sparse")
    assert torch.allclose(sparse[0, :40], dense[0, :40], atol=1e-5)  # all keys fit the budget there
    assert not torch.allclose(sparse[0, -20:], dense[0, -20:], atol=1e-3)


def test_answer_tokens_get_their_own_term():
    model, *_ = prepared()
    ids = torch.randint(0, 97, (1, L), generator=torch.Generator().manual_seed(2))
    ans = torch.zeros_like(ids, dtype=torch.bool)
    ans[0, -5:] = True
    with torch.no_grad():
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        loss, parts = LT.lm_loss(model, hidden, ids, ans)
        ce = F.cross_entropy(model.lm_head(hidden[0, :-1]).float(), ids[0, 1:], reduction="none")
    assert torch.allclose(parts, torch.stack([ce.mean(), ce[-5:].mean()]), atol=1e-5)
    assert torch.allclose(loss, parts.sum())


def test_indexer_loss_reaches_only_the_indexer():
    model, _, lora, idx = prepared()
    tap = LT.Tap(model.dsa_state.config)
    model.dsa_state.capture = tap
    ids = torch.randint(0, 97, (1, L), generator=torch.Generator().manual_seed(3))
    tap.on = True
    model.model(input_ids=ids, use_cache=False)
    tap.on = False
    assert sorted(tap.store) == [1, 2]  # the sparse layers (layer 0 stays dense)
    loss, avg = LT.indexer_loss(model, tap.store, queries=16, rng=random.Random(0))
    loss.backward()
    assert avg > 0 and _grads(idx) > 0 and _grads(lora) == 0


def test_train_steps_and_delta_reloads(tmp_path):
    model, lora_cfg, lora, idx = prepared()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 97, (6, L), generator=g)
    answer = torch.zeros_like(tokens, dtype=torch.bool)
    answer[:, -3:] = True
    np.savez_compressed(tmp_path / f"windows_{L}.npz", tokens=tokens.numpy().astype(np.uint16),
                        answer=answer.numpy().astype(np.uint8))
    phases = LT.parse_phases(f"{L}:1", tmp_path)
    before = [p.detach().clone() for p in idx]
    rows = []
    out = LT.train(model, phases, lora_params=lora, idx_params=idx, lr=1e-2, idx_lr=1e-2, time_budget=1e9,
                   tokens_per_step=2 * L, queries=16, seed=0, max_steps=3, log=lambda r, **k: rows.append(r))
    assert out["steps"] == 3 and out["tokens"] == 6 * L and len(rows) == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, idx))  # the indexer moved
    save_adapter(model, tmp_path / "delta", lora_cfg)
    model.dsa_state.capture = None
    merge(model)
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    model.eval()
    ids = tokens[:1]
    dsa.set_mode(model, "dense")
    with torch.no_grad():
        want = model(ids).logits
    fresh = tiny_model()
    load_adapter(fresh, tmp_path / "delta")
    dsa.attach(fresh, small_cfg())
    dsa.set_mode(fresh, "dense")
    with torch.no_grad():
        got = fresh(ids).logits
    # bf16 storage of the delta: close, not equal
    assert torch.allclose(got, want, atol=2e-2), float((got - want).abs().max())
    assert float((got - tiny_model()(ids).logits).abs().max()) > 1e-3  # and it is not the base model


def test_adapter_for_another_shape_fails(tmp_path):
    model, lora_cfg, *_ = prepared()
    save_adapter(model, tmp_path / "delta", lora_cfg)
    from transformers import LlamaConfig, LlamaForCausalLM
    other = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2))
    import pytest
    with pytest.raises(ValueError, match="fit no module|no LoRA weights"):
        load_adapter(other, tmp_path / "delta")


def test_rope_choices_cover_the_new_length():
    """"base": the slowest rotary dimension turns over the new length as far as it did over the native one;
    "yarn": YaRN at the length ratio over the native window."""
    model = tiny_model()  # head_dim 16, rope_theta 10000, 1,024 native positions
    d = 16
    base = LT.rope_choice(model, "base", 32 * 1024)
    slowest = lambda theta: theta ** (-(d - 2) / d)
    assert abs(slowest(base["rope_theta"]) * 32 * 1024 - slowest(10000.0) * 1024) < 1e-6 * 1024
    yarn = LT.rope_choice(model, "yarn", 32 * 1024)
    assert yarn["rope_type"] == "yarn" and yarn["factor"] == 32.0 and yarn["original_max_position_embeddings"] == 1024


def test_lm_mask_limits_the_plain_term():
    """Fine-tuning windows (bench/make_sft_data.py) carry an lm mask: padding and prompts stay out of the loss."""
    model, *_ = prepared()
    ids = torch.randint(0, 97, (1, L), generator=torch.Generator().manual_seed(4))
    ans = torch.zeros_like(ids, dtype=torch.bool)
    ans[0, 100:110] = True
    lm = torch.zeros_like(ids, dtype=torch.bool)
    lm[0, 20:60] = True
    with torch.no_grad():
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        _, parts = LT.lm_loss(model, hidden, ids, ans, lm)
        _, none = LT.lm_loss(model, hidden, ids, ans, torch.zeros_like(lm))
        ce = F.cross_entropy(model.lm_head(hidden[0, :-1]).float(), ids[0, 1:], reduction="none")
    assert torch.allclose(parts, torch.stack([ce[19:59].mean(), ce[99:109].mean()]), atol=1e-5)
    assert float(none[0]) == 0.0 and torch.allclose(none[1], parts[1])


def _windows(tmp_path, lengths: list[int]) -> None:
    g = torch.Generator().manual_seed(0)
    for n in lengths:
        tokens = torch.randint(0, 97, (4, n), generator=g).numpy().astype(np.uint16)
        answer = np.zeros_like(tokens, dtype=np.uint8)
        answer[:, -3:] = 1
        np.savez_compressed(tmp_path / f"windows_{n}.npz", tokens=tokens, answer=answer, lm=np.zeros_like(answer))


def test_interleave_mixes_lengths_from_the_first_steps(tmp_path):
    _windows(tmp_path, [L, 2 * L])
    seqs = {}
    for inter in (False, True):
        model, _, lora, idx = prepared()
        rows = []
        LT.train(model, LT.parse_phases(f"{L}:0.5,{2 * L}:0.5", tmp_path), lora_params=lora, idx_params=idx, lr=1e-3,
                 idx_lr=1e-3, time_budget=1e9, tokens_per_step=2 * L, queries=16, seed=0, max_steps=4,
                 interleave=inter, log=lambda r, **k: rows.append(r))
        seqs[inter] = [__import__("json").loads(r)["seq_len"] for r in rows]
    assert seqs[False] == [L, L, 2 * L, 2 * L]  # a curriculum: phases in order
    assert seqs[True][:2] != [L, L] and sorted(seqs[True]) == [L, L, 2 * L, 2 * L]  # a mixture


def test_resume_continues_a_saved_delta(tmp_path):
    model, lora_cfg, lora, idx = prepared()
    with torch.no_grad():
        for p in lora:
            p.add_(torch.randn_like(p) * 0.05)
    save_adapter(model, tmp_path / "delta", lora_cfg)
    again, _, lora2, _ = prepared()
    assert not all(torch.equal(a, b) for a, b in zip(lora, lora2))
    from dsa.lora import resume
    resume(again, tmp_path / "delta")
    for a, b in zip(lora, lora2):  # bf16 storage: equal to bf16 precision
        assert torch.allclose(a.float(), b.float(), atol=1e-2, rtol=1e-2)
    bad = LoraConfig(rank=2, alpha=8.0)
    small = tiny_model()
    LT.prepare(small, small_cfg(), bad, None, seed=0)
    try:
        resume(small, tmp_path / "delta")
    except ValueError as e:
        assert "rank-4" in str(e)
    else:
        raise AssertionError("a delta of another rank must not load")


def test_short_windows_are_batched_with_the_same_loss(tmp_path):
    """batch_tokens 2L: the two windows of a step go through one forward, and the step's LM loss is the one of
    two separate forwards (equal token counts, so the pooled mean equals the mean of means)."""
    _windows(tmp_path, [L])
    got = {}
    for batch in (L, 2 * L):
        model, _, lora, idx = prepared()
        shapes, rows = [], []
        hook = model.model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                                     with_kwargs=True)
        LT.train(model, LT.parse_phases(f"{L}:1", tmp_path), lora_params=lora, idx_params=idx, lr=1e-3, idx_lr=1e-3,
                 time_budget=1e9, tokens_per_step=2 * L, queries=16, seed=0, max_steps=1, batch_tokens=batch,
                 log=lambda r, **k: rows.append(__import__("json").loads(r)))
        hook.remove()
        got[batch] = (shapes, rows[0])
    assert got[L][0] == [(1, L), (1, L)] and got[2 * L][0] == [(2, L)]
    one, two = got[L][1], got[2 * L][1]
    assert one["tokens"] == two["tokens"] == 2 * L
    assert abs(one["lm_loss"] - two["lm_loss"]) < 1e-3 and abs(one["answer_loss"] - two["answer_loss"]) < 1e-3
