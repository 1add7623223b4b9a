"""Shared helpers for the LangChain tests (no tests here): a tiny random Llama with the default model's
tokenizer, saved once per test process, and small documents."""

from __future__ import annotations

import shutil
from pathlib import Path

from docreader.models import default_model_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
# DSA knobs small enough that a ~200-token document is really sparse on the tiny model
TINY_DSA = {"top_k": 16, "n_blocks": 2, "local_window": 8, "sink_tokens": 4}

CONTRACT = ("SUPPLY AGREEMENT\n\n1. Term. This agreement starts on 1 March 2024 and runs for three years.\n"
            "2. Notice. Either party may end it with ninety (90) days written notice.\n"
            "3. Governing law. This agreement is governed by the laws of the State of Delaware.\n"
            "4. Payment. Invoices are due within thirty days of receipt.\n")

_built: dict[str, Path] = {}
REAL_MODEL_DIR = default_model_dir()  # resolved at import, before any test points DOCREADER_HOME elsewhere


def tiny_model_dir(root: Path) -> Path:
    """A 2-layer random Llama (vocab of SmolLM2's tokenizer) saved under root, built once per process."""
    if "dir" in _built and _built["dir"].exists():
        return _built["dir"]
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    src = REAL_MODEL_DIR
    assert (src / "tokenizer.json").exists(), f"the default model's tokenizer is needed: {src}"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
                      initializer_range=0.2)  # large enough that greedy decoding gives varied words
    out = Path(root) / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    _built["dir"] = out
    return out


def write_contract(path: Path) -> Path:
    path.write_text(CONTRACT, encoding="utf-8")
    return path
