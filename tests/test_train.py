"""dsa.train on a tiny random Llama (CPU, seconds): targets are right, the loss falls, weights reload."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

import dsa
from dsa import train as T


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def small_cfg() -> dsa.DSAConfig:
    return dsa.DSAConfig(index_heads=2, index_dim=16, rope_dim=8, top_k=32, n_blocks=2, block_size=16,
                         sink_tokens=4, local_window=8)


def test_attention_target_matches_reference():
    torch.manual_seed(1)
    B, H, Hkv, L, D = 2, 4, 2, 20, 8
    q, k = torch.randn(B, H, L, D), torch.randn(B, Hkv, L, D)
    p = T.attention_target(q, k, 5, 12, D ** -0.5)  # queries 5..11 over keys 0..11
    kk = k.repeat_interleave(2, dim=1)
    logits = (q @ kk.transpose(-1, -2)) * D ** -0.5
    logits = logits.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    ref = logits.softmax(-1).sum(1)
    ref = ref / ref.sum(-1, keepdim=True)
    assert torch.allclose(p, ref[:, 5:12, :12], atol=1e-6)
    assert torch.all(p[:, 0, 6:] == 0)  # query 5 sees keys 0..5 only


def test_kl_zero_when_indexer_matches():
    p = torch.tensor([[[0.5, 0.5, 0.0]]])
    logq = torch.log(torch.tensor([[[0.5, 0.5, 1.0]]]))
    logq[..., 2] = 0.0  # masked entries are 0 in indexer_log_probs
    assert abs(float(T.kl_chunk(p, logq))) < 1e-7


def test_loss_decreases_and_weights_reload(tmp_path):
    model = tiny_model()
    T.prepare(model, small_cfg(), seed=0)
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, 97, (16, 128), generator=g)
    np.save(tmp_path / "w.npy", windows.numpy().astype(np.uint16))
    windows = T.load_windows(tmp_path / "w.npy")
    out = tmp_path / "weights"
    logs = []
    summary = T.train_indexer(model, windows, steps=30, lr=1e-2, batch=2, chunk=48, log_every=0, out=out,
                              log=logs.append)
    curve = json.loads((out / "loss_curve.json").read_text())
    assert len(curve) == 30 and summary["steps"] == 30
    assert np.mean(curve[-5:]) < 0.8 * np.mean(curve[:5]), curve
    meta = json.loads((out / "training.json").read_text())
    assert meta["fingerprint"] == dsa.fingerprint(model.config) and "final_loss" in meta

    # the saved weights reload into a fresh attach and score like the trained indexer (bf16 rounding)
    fresh = tiny_model()
    dsa.attach(fresh, dsa.DSAConfig.load(out / "dsa_config.json"))
    fresh.float()
    dsa.load_indexer(fresh, out)
    ids = windows[:1]
    trained = T.indexer_loss_backward(model, ids, chunk=64, backward=False)[0]
    reloaded = T.indexer_loss_backward(fresh, ids, chunk=64, backward=False)[0]
    assert abs(trained - reloaded) < 0.05 * trained + 1e-3
    dsa.set_mode(fresh, "sparse")
    with torch.no_grad():
        logits = fresh(ids).logits
    assert torch.isfinite(logits).all()


def test_chunking_does_not_change_loss():
    model = tiny_model()
    T.prepare(model, small_cfg(), seed=0)
    ids = torch.randint(0, 97, (1, 100), generator=torch.Generator().manual_seed(2))
    a = T.indexer_loss_backward(model, ids, chunk=100, backward=False)[0]
    b = T.indexer_loss_backward(model, ids, chunk=17, backward=False)[0]
    assert abs(a - b) < 1e-4


import pytest


@pytest.mark.parametrize("target", ["selectable", "two-stage"])
def test_selectable_target_trains(target):
    model = tiny_model()
    T.prepare(model, small_cfg(), seed=0)
    windows = torch.randint(0, 97, (16, 128), generator=torch.Generator().manual_seed(3))
    T.train_indexer(model, windows, steps=25, lr=1e-2, batch=2, chunk=48, log_every=0, target=target)
    summary = T.train_indexer(model, windows, steps=1, lr=0.0, batch=2, chunk=48, log_every=0, target=target)
    fresh = tiny_model()
    T.prepare(fresh, small_cfg(), seed=0)
    before = T.indexer_loss_backward(fresh, windows[:4], chunk=64, backward=False, target=target)[0]
    after = T.indexer_loss_backward(model, windows[:4], chunk=64, backward=False, target=target)[0]
    assert np.isfinite(summary["final_loss"]) and after < 0.8 * before, (before, after)
