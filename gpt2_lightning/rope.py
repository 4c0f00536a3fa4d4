"""Rotary position embeddings (Su et al. 2021, "RoFormer", https://arxiv.org/abs/2104.09864).

Layout: rotate-half, as transformers' Llama does. A head vector x of size hs is read as two halves
x = [x1, x2] (x1 = x[:hs/2], x2 = x[hs/2:]); frequency i (0 <= i < hs/2) rotates the pair (x1[i], x2[i]) by the
angle m·θ_i at position m, with θ_i = rope_theta^(-2i/hs):

    rope(x, m) = x · cos(mθ) + rotate_half(x) · sin(mθ),   rotate_half([x1, x2]) = [-x2, x1]

so q·k after rotation depends on the positions only through m - n.
"""

from __future__ import annotations

import torch


def rope_frequencies(
    head_dim: int, theta: float = 10000.0, device=None, scaling: str | None = None, factor: float = 1.0
) -> torch.Tensor:
    """θ_i = theta^(-2i / head_dim) for i < head_dim / 2 → (hs/2,) float32, scaled to run past the training length:

    - "linear", position interpolation (Chen et al. 2023, arXiv:2306.15595): position m is read as m / s, i.e.
      every θ_i divided by s — the model never sees an angle larger than in training, at the price of resolution;
    - "ntk", NTK-aware scaling (bloc97, 2023): the base becomes theta · s^(hs / (hs - 2)), which leaves θ_0 = 1
      untouched and divides the lowest frequency by exactly s: high frequencies (local order) keep their
      resolution, low ones are interpolated.

    At s = 1 both are exactly RoPE.
    """
    if scaling == "ntk":
        theta = theta * factor ** (head_dim / (head_dim - 2))
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    return inv_freq / factor if scaling == "linear" else inv_freq


def rope_tables(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of m·θ for each position m → two (T, hs) float32 tables (each angle repeated for both halves)."""
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, heads, T, hs) queries or keys by their positions' (T, hs) tables."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)
