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

# ~400 tokens for the real model: long enough that the selected spans pick out lines, short enough for CPU
CLAUSES = [
    "Definitions. Words in capitals have the meanings given in Schedule 1.",
    "Appointment. The Supplier appoints the Distributor as its non-exclusive distributor in the Territory.",
    "Term. This agreement starts on 1 March 2024 and runs for three years.",
    "Orders. The Distributor places orders in writing; an order binds the Supplier once it is confirmed.",
    "Prices. Prices are those in the Supplier's price list current on the date of the order.",
    "Payment. Invoices are due within thirty days of receipt, in US dollars.",
    "Delivery. Products are delivered FOB the Supplier's warehouse in Austin, Texas.",
    "Warranty. The Supplier warrants that the Products are free from defects for twelve months.",
    "Liability. Neither party is liable for indirect or consequential loss.",
    "Confidentiality. Each party keeps the other's confidential information secret for five years.",
    "Trademarks. The Distributor may use the Supplier's trademarks only to promote the Products.",
    "Notice. Either party may end this agreement with ninety (90) days written notice.",
    "Termination for breach. A party may end this agreement at once if the other commits a material breach.",
    "Force majeure. Neither party is liable for delay caused by events beyond its reasonable control.",
    "Assignment. Neither party may assign this agreement without the other's written consent.",
    "Governing law. This agreement is governed by the laws of the State of Delaware.",
    "Disputes. The courts of Wilmington, Delaware have exclusive jurisdiction over any dispute.",
    "Entire agreement. This agreement replaces all earlier agreements between the parties.",
]
LONG_CONTRACT = "DISTRIBUTION AGREEMENT\n\n" + "".join(f"{i}. {c}\n" for i, c in enumerate(CLAUSES, 1))

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


def write_contract(path: Path, text: str = CONTRACT) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
