"""The real default model (SmolLM2-135M-Instruct): DSA's sparse path at full budget equals dense
attention, and the shipped indexer is picked up automatically."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import dsa
from docreader import models

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lm():
    models.install_default(progress=lambda m: None)
    return models.load(None)


def test_shipped_indexer_is_found(lm):
    """The default loads the long-context delta and the indexer trained with it; the base its own indexer."""
    assert lm.indexer_weights and lm.indexer_weights.endswith("smollm2-135m-long") and lm.adapter == lm.indexer_weights
    base = models.load(models.BASE_MODEL)
    assert base.indexer_weights.endswith("smollm2-135m") and base.adapter is None


@torch.no_grad()
def test_full_budget_sparse_path_equals_dense(lm):
    model = lm.model
    x = torch.randint(100, 40000, (1, 512), generator=torch.Generator().manual_seed(0))
    cfg = model.dsa_state.config
    dsa.set_mode(model, "dense")
    ref = model(x).logits
    dsa.set_mode(model, "sparse")
    saved = dataclasses.asdict(cfg)
    try:  # 8 blocks kept, 64 sink + 128 local + 448 top_k >= 512 keys: the gather path keeps everything
        cfg.n_blocks, cfg.top_k = 8, 448
        out = model(x).logits
    finally:
        for k, v in saved.items():
            setattr(cfg, k, v)
    assert torch.allclose(out, ref, atol=2e-4), (out - ref).abs().max()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.999
