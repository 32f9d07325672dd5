"""Cost aggregation inside each decoder stage (docs/paper-choices.md #10-#12).

* :class:`SpatialAggregation` - hybrid dilated convolution (3×3, dilations 1, 2, 4) applied to every class map
  independently with shared weights, GroupNorm + GELU, residual.
* :class:`ClassAggregation` - attention across the K classes at every (pooled) position, then an MLP. It has no
  positional encoding, so it works for any K and is equivariant to the class order. The attention is linear
  (elu+1 feature map, as CAT-Seg/SED), which makes it *exactly* chunkable over classes: every query only needs
  the sums S = Σ_k φ(key_k) value_kᵀ and z = Σ_k φ(key_k), which are accumulated chunk by chunk in a first sweep
  and applied chunk by chunk in a second. Memory is then bounded by the chunk, and the result equals the
  unchunked one up to float summation order (tested).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_count(channels: int, per_group: int = 16) -> int:
    """Largest divisor of ``channels`` not above channels // per_group (at least 1)."""
    g = max(1, channels // per_group)
    while channels % g:
        g -= 1
    return g


def class_chunks(num_classes: int, chunk: int):
    """Slices covering range(K) in pieces of ``chunk`` (0 = one piece)."""
    step = num_classes if chunk <= 0 else chunk
    return [slice(s, min(s + step, num_classes)) for s in range(0, num_classes, step)]


class SpatialAggregation(nn.Module):
    """Per-class hybrid dilated conv block: (B, K, C, h, w) -> (B, K, C, h, w)."""

    def __init__(self, dim: int, dilations: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        layers = []
        for d in dilations:
            layers += [nn.Conv2d(dim, dim, 3, padding=d, dilation=d, bias=False), nn.GroupNorm(group_count(dim), dim), nn.GELU()]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        B, K, C, h, w = x.shape
        y = x.reshape(B * K, C, h, w)  # classes folded into the batch
        y = y + self.block(y)
        return y.view(B, K, C, h, w)


class ClassAggregation(nn.Module):
    """Linear attention over classes + MLP at each position, exact under class chunking."""

    def __init__(self, dim: int, heads: int = 4, mlp_ratio: int = 4, pool_train: int = 2, pool_test: int = 1):
        super().__init__()
        self.heads = heads
        self.pool_train, self.pool_test = pool_train, pool_test
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    @property
    def pool(self) -> int:
        return self.pool_train if self.training else self.pool_test

    def _tokens(self, x: Tensor) -> Tensor:
        """(B, k, C, h, w) -> pooled tokens (B·h'·w', k, C)."""
        B, k, C, h, w = x.shape
        if self.pool > 1:
            x = F.avg_pool2d(x.reshape(B * k, C, h, w), self.pool, ceil_mode=True)  # (B*k, C, h', w')
            x = x.view(B, k, C, *x.shape[-2:])
        return x.permute(0, 3, 4, 1, 2).reshape(-1, k, C)  # (B, k, C, h', w') -> (B*h'*w', k, C)

    def _split(self, t: Tensor) -> Tensor:
        n, k, C = t.shape
        return t.view(n, k, self.heads, C // self.heads)  # (n, k, C) -> (n, k, heads, C/heads)

    def _keys_values(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        t = self.norm1(tokens)
        key = F.elu(self._split(self.k(t))) + 1  # φ(k): (n, k, heads, e)
        value = self._split(self.v(t))
        kv = torch.einsum("nkhe,nkhf->nhef", key, value)  # Σ_k φ(k) vᵀ over this chunk: (n, heads, e, e)
        return kv, key.sum(dim=1)  # z = Σ_k φ(k): (n, heads, e)

    def _update(self, tokens: Tensor, kv: Tensor, z: Tensor) -> Tensor:
        """The increment attention+MLP adds to each token: (n, k, C)."""
        n, k, C = tokens.shape
        query = F.elu(self._split(self.q(self.norm1(tokens)))) + 1  # (n, k, heads, e)
        num = torch.einsum("nkhe,nhef->nkhf", query, kv)  # (n, k, heads, e)
        den = torch.einsum("nkhe,nhe->nkh", query, z).unsqueeze(-1) + 1e-6  # (n, k, heads, 1)
        attended = self.out((num / den).reshape(n, k, C))  # (n, k, heads, e) -> (n, k, C)
        y = tokens + attended
        y = y + self.mlp(self.norm2(y))
        return y - tokens

    def forward(self, x: Tensor, chunk: int = 0) -> Tensor:
        """(B, K, C, h, w) -> (B, K, C, h, w); ``chunk`` classes at a time (0 = all), same result."""
        B, K, C, h, w = x.shape
        pieces = class_chunks(K, chunk)
        kv: Optional[Tensor] = None
        z: Optional[Tensor] = None
        for s in pieces:  # sweep 1: global key/value statistics over all classes
            kv_s, z_s = self._keys_values(self._tokens(x[:, s]))
            kv, z = (kv_s, z_s) if kv is None else (kv + kv_s, z + z_s)
        out = []
        for s in pieces:  # sweep 2: each class chunk reads the global statistics
            delta = self._update(self._tokens(x[:, s]), kv, z)  # (B*h'*w', k, C)
            hp, wp = (-(-h // self.pool), -(-w // self.pool)) if self.pool > 1 else (h, w)
            k = s.stop - s.start
            delta = delta.view(B, hp, wp, k, C).permute(0, 3, 4, 1, 2)  # -> (B, k, C, h', w')
            if self.pool > 1:
                delta = F.interpolate(delta.reshape(B * k, C, hp, wp), size=(h, w), mode="bilinear", align_corners=False)
                delta = delta.view(B, k, C, h, w)
            out.append(x[:, s] + delta)
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)
