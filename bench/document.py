"""A document's token ids for the benchmarks that prefill real text (speed --text, prefill_split, tile_union)."""

from __future__ import annotations

from pathlib import Path

import torch


def document_ids(path: str, tokenizer, add_special_tokens: bool = True) -> torch.Tensor:
    """The UTF-8 text file at `path` tokenised -> ids [L]; a one-line error (SystemExit) if it cannot be."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: {path}: cannot read as UTF-8 text ({e.__class__.__name__})")
    ids = torch.tensor(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"], dtype=torch.long)
    if len(ids) == 0:
        raise SystemExit(f"error: {path}: no text")
    return ids
