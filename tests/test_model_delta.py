"""The default model loads its shipped long-context delta (LoRA merged + its own RoPE + its indexer); the base
model stays selectable by name; `models list` shows every part with its training record."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import dsa
from docreader import models
from dsa import weights as W
from dsa.lora import LoraConfig, add_lora, save_adapter


@pytest.fixture
def shipped_with_delta(tmp_path, monkeypatch, real_model_dir):
    """A shipped-weights dir holding the real indexer and a small random delta made for the real model."""
    ship = tmp_path / "weights"
    shutil.copytree(W.SHIPPED / "smollm2-135m", ship / "smollm2-135m")
    base = models.load(None).model  # before the delta exists: the plain model
    dsa.detach(base)
    cfg = LoraConfig(rank=2, alpha=2.0, rope={"rope_type": "yarn", "factor": 32.0, "rope_theta": 100000.0,
                                              "original_max_position_embeddings": 8192}, max_positions=262144)
    add_lora(base, cfg)
    torch.manual_seed(0)
    for m in base.modules():
        if hasattr(m, "lora_B"):
            m.lora_B.data.normal_(0, 0.01)
    delta = ship / "smollm2-135m-long"
    save_adapter(base, delta, cfg, training={"fingerprint": W.fingerprint(base.config), "steps": 3, "tokens": 9,
                                             "lm_loss_last": 2.5, "gpu_seconds": 1.0, "gpu": "test", "command": "x"})
    for f in ("indexer.safetensors", "dsa_config.json"):
        shutil.copy(ship / "smollm2-135m" / f, delta / f)
    monkeypatch.setattr(W, "SHIPPED", ship)
    return delta


def test_default_loads_the_delta_and_base_stays_selectable(model_home, shipped_with_delta):
    lm = models.load(None)
    base = models.load(models.BASE_MODEL)
    assert lm.adapter == str(shipped_with_delta) and base.adapter is None
    assert lm.indexer_weights == str(shipped_with_delta)
    assert lm.context_window == 262144 and base.context_window == base.native_window * models.MAX_YARN_FACTOR
    ids = lm.tokenizer("The notice period is thirty days.", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = lm.model(ids).logits, base.model(ids).logits
    assert float((a - b).abs().max()) > 1e-3  # the delta is merged into the default's weights
    info = models.provenance_info(lm, "sparse", {}, "picks")
    assert info["adapter"]["file"].endswith("adapter.safetensors") and len(info["adapter"]["sha256"]) == 64
    assert models.provenance_info(base, "sparse", {}, "picks")["adapter"] is None


def test_models_list_shows_parts_with_records(model_home, shipped_with_delta):
    rows = {r["name"]: r for r in models.list_models()}
    kinds = [p["kind"] for p in rows[models.DEFAULT_MODEL]["parts"]]
    assert kinds == ["base", "adapter", "indexer"]
    adapter = rows[models.DEFAULT_MODEL]["parts"][1]
    assert adapter["training"]["command"] == "x" and adapter["training"]["steps"] == 3
    assert json.loads(open(adapter["record"]).read())["tokens"] == 9
    assert [p["kind"] for p in rows[models.BASE_MODEL]["parts"]] == ["base", "indexer"]
