"""`DSAConfig`: every knob of DeepSeek Sparse Attention in one place, saved beside trained weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class DSAConfig:
    # lightning indexer: H_I heads of d_I dims, one shared key per token; RoPE on the first rope_dim dims
    index_heads: int = 4
    index_dim: int = 32
    rope_dim: int = 16
    rope_theta: float = 10000.0
    # stage 1 (excerpts): score 64-token blocks with block-pooled indexer keys, keep the top n_blocks
    block_size: int = 64
    n_blocks: int = 64
    # stage 2 (tokens): inside kept blocks keep the top_k tokens by indexer score
    top_k: int = 1024
    # always kept: the attention sink (first tokens) and a local window of recent tokens
    sink_tokens: int = 64
    local_window: int = 128
    # layers that keep dense attention (layer 0 is diffuse: see research notes)
    dense_layers: list[int] = field(default_factory=lambda: [0])
    # "sparse": attention reads only the selection; "dense": dense attention, indexer runs only to record
    mode: str = "sparse"
    # queries per prefill chunk (one block of queries shares one gathered key set)
    query_chunk: int = 64

    def __post_init__(self) -> None:
        if self.rope_dim > self.index_dim or self.rope_dim % 2:
            raise ValueError(f"rope_dim must be even and <= index_dim, got {self.rope_dim}")
        if self.mode not in ("sparse", "dense"):
            raise ValueError(f"mode must be 'sparse' or 'dense', got {self.mode!r}")
        for name in ("index_heads", "index_dim", "block_size", "n_blocks", "top_k", "query_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def budget(self) -> int:
        """Most keys a query can read: sink + local window + top_k."""
        return self.sink_tokens + self.local_window + self.top_k

    def is_sparse_layer(self, layer_idx: int) -> bool:
        return layer_idx not in self.dense_layers

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DSAConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "DSAConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
