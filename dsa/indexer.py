"""The lightning indexer: a tiny scorer deciding which earlier tokens each query may read.

I(t, s) = sum_j w[t, j] * ReLU(q[t, j] . k[s])  with one key per token shared by all H_I heads, and the
1/sqrt(H_I * d_I) scale folded into w (kept in fp32, as in DeepSeek-V3.2-Exp).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DSAConfig
from .rope import apply_rope, rope_cos_sin


class LightningIndexer(nn.Module):
    def __init__(self, hidden_size: int, cfg: DSAConfig):
        super().__init__()
        self.cfg = cfg
        self.wq = nn.Linear(hidden_size, cfg.index_heads * cfg.index_dim, bias=False)
        self.wk = nn.Linear(hidden_size, cfg.index_dim, bias=False)
        self.k_norm = nn.LayerNorm(cfg.index_dim)
        self.weights_proj = nn.Linear(hidden_size, cfg.index_heads, bias=False)
        self.scale = 1.0 / math.sqrt(cfg.index_heads * cfg.index_dim)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x [B, L, hidden], positions [L] -> q [B, L, H_I, d_I], w [B, L, H_I] fp32, k [B, L, d_I].
        rope: (cos, sin) for `positions` when the caller already has them (shared by every layer)."""
        B, L, _ = x.shape
        cfg = self.cfg
        cos, sin = rope if rope is not None else rope_cos_sin(positions, cfg.rope_dim, cfg.rope_theta)
        q = self.wq(x).view(B, L, cfg.index_heads, cfg.index_dim)
        q = apply_rope(q, cos, sin)
        k = apply_rope(self.k_norm(self.wk(x)), cos, sin)
        w = self.weights_proj(x).float() * self.scale
        return q, w, k


def index_scores(q: torch.Tensor, w: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q [B, Lq, H, d], w [B, Lq, H], k [B, Lk, d] -> scores [B, Lq, Lk] (fp32)."""
    logits = torch.einsum("bqhd,bkd->bqhk", q.float(), k.float())  # [B, Lq, H, Lk]
    return torch.einsum("bqhk,bqh->bqk", F.relu(logits), w)
