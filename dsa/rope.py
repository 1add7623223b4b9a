"""Rotary embedding for the indexer's first `rope_dim` dims: non-interleaved (rotate-half), with the
frequencies computed for that sub-dimension. Slicing the model's own cos/sin instead gives paired dims
different frequencies (a known reproduction bug that only shows at long context)."""

import torch


def rope_cos_sin(positions: torch.Tensor, rope_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [L] -> cos, sin [L, rope_dim] (fp32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rope_dim, 2, device=positions.device, dtype=torch.float32) / rope_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]  # [L, rope_dim/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [L, rope_dim], rotate-half layout
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., L, (H,) d]; rotates x[..., :rope_dim] and passes the rest through. cos/sin [L, rope_dim]."""
    r = cos.shape[-1]
    if x.dim() == cos.dim() + 2:  # [B, L, H, d]: broadcast over heads
        cos, sin = cos[:, None, :], sin[:, None, :]
    xr, xp = x[..., :r], x[..., r:]
    x1, x2 = xr[..., : r // 2], xr[..., r // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    return torch.cat([(xr.float() * cos + rotated.float() * sin).to(x.dtype), xp], dim=-1)
