"""Cost aggregation inside each decoder stage (docs/paper-choices.md #10-#12).

* :class:`SpatialAggregation` - hybrid dilated convolution (3×3, dilations 1, 2, 4) applied to every class map
  independently with shared weights, GroupNorm + GELU, residual.
* :class:`ConvNeXtAggregation` - SED's spatial aggregation (``model.spatial_aggregation=convnext``): one ConvNeXt
  block per class map.
* :class:`ClassAggregation` - attention across the K classes at every (pooled) position, then an MLP. It has no
  positional encoding, so it works for any K and is equivariant to the class order. The attention is linear
  (elu+1 feature map, as CAT-Seg/SED), which makes it *exactly* chunkable over classes: every query only needs
  the sums S = Σ_k φ(key_k) value_kᵀ and z = Σ_k φ(key_k), which are accumulated chunk by chunk in a first sweep
  and applied chunk by chunk in a second. Memory is then bounded by the chunk, and the result equals the
  unchunked one up to float summation order (tested).
* :class:`SEDClassAggregation` - SED's class-attention layer (``model.class_aggregation=sed``), the same linear
  attention with SED's own details, kept exactly so that SED's released weights give SED's outputs.

At test time (no pooling, no gradient) the class attention runs by *pixel blocks* instead of class chunks: every
position attends only across the classes at that position, so a block of positions holds all K classes at once in
one pass - no second sweep, no layout copies of the whole stage, and each block's intermediates stay in the CPU's
cache. Same result as the class-chunked sweeps up to float summation order (tested); the class maps may be in any
layout, and are read and written fastest when each class map is channels-last (``DPSeg.decode`` keeps them so).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpseg.model.class_maps import class_maps, is_channels_last_per_class


def group_count(channels: int, per_group: int = 16) -> int:
    """Largest divisor of ``channels`` not above channels // per_group (at least 1)."""
    g = max(1, channels // per_group)
    while channels % g:
        g -= 1
    return g


# Elements (classes x positions x channels) of one pixel block of the test-time class attention: ~2 MB of fp32 keeps
# a block's intermediates in a CPU core's cache (measured best on the 2-core reference machine: 3x the class-chunked
# sweeps at stage 2, K = 150); a GPU wants few large blocks.
PIXEL_BLOCK = {"cpu": 2**19, "cuda": 2**25}


def class_chunks(num_classes: int, chunk: int):
    """Slices covering range(K) in pieces of ``chunk`` (0 = one piece; none for K = 0)."""
    step = max(1, num_classes if chunk <= 0 else chunk)
    return [slice(s, min(s + step, num_classes)) for s in range(0, num_classes, step)]


class SpatialAggregation(nn.Module):
    """Per-class hybrid dilated conv block: (B, K, C, h, w) -> (B, K, C, h, w)."""

    def __init__(self, dim: int, dilations: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        layers = []
        for d in dilations:
            layers += [
                nn.Conv2d(dim, dim, 3, padding=d, dilation=d, bias=False),
                nn.GroupNorm(group_count(dim), dim),
                nn.GELU(),
            ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        B, K, C, h, w = x.shape
        y = x.reshape(B * K, C, h, w)  # classes folded into the batch
        y = y + self.block(y)
        return y.view(B, K, C, h, w)


class ConvNeXtAggregation(nn.Module):
    """SED's per-class ConvNeXt block: depthwise k×k conv, LayerNorm (eps 1e-6), MLP (× mlp_ratio, GELU), layer
    scale (initialised to 1, as SED, not ConvNeXt's 1e-6), residual: (B, K, C, h, w) -> (B, K, C, h, w)."""

    def __init__(self, dim: int, kernel: int = 9, mlp_ratio: int = 4):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, dim * mlp_ratio)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(dim * mlp_ratio, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        B, K, C, h, w = x.shape
        y = x.reshape(B * K, C, h, w)  # classes folded into the batch
        z = self.dwconv(y).permute(0, 2, 3, 1)  # (B*K, C, h, w) -> (B*K, h, w, C): channels last for LN and MLP
        z = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(z))))
        return (y + z.permute(0, 3, 1, 2)).view(B, K, C, h, w)  # (B*K, h, w, C) -> (B, K, C, h, w)


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
        self.out = self._output_projection(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), self._activation(), nn.Linear(dim * mlp_ratio, dim))
        self.pixel_blocks = True  # test time: attend by pixel blocks (exact; False = the class-chunked sweeps)

    def _output_projection(self, dim: int) -> nn.Module:
        return nn.Linear(dim, dim)

    def _activation(self) -> nn.Module:
        return nn.GELU()

    @property
    def pool(self) -> int:
        return self.pool_train if self.training else self.pool_test

    def _pooled_size(self, h: int, w: int) -> tuple[int, int]:
        return -(-h // self.pool), -(-w // self.pool)  # partial windows at the border count (ceil)

    def _pool_map(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.pool, ceil_mode=True)

    def _unpool(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def _tokens(self, x: Tensor) -> Tensor:
        """(B, k, C, h, w) -> pooled tokens (B·h'·w', k, C)."""
        B, k, C, h, w = x.shape
        if self.pool > 1:
            x = self._pool_map(x.reshape(B * k, C, h, w))  # (B*k, C, h', w')
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
        return self._attend(tokens, kv, z) - tokens

    def _attend(self, tokens: Tensor, kv: Tensor, z: Tensor) -> Tensor:
        """Tokens after attention and MLP, each with its residual: (n, k, C)."""
        n, k, C = tokens.shape
        query = F.elu(self._split(self.q(self.norm1(tokens)))) + 1  # (n, k, heads, e)
        num = torch.einsum("nkhe,nhef->nkhf", query, kv)  # (n, k, heads, e)
        den = torch.einsum("nkhe,nhe->nkh", query, z).unsqueeze(-1) + 1e-6  # (n, k, heads, 1)
        attended = self.out((num / den).reshape(n, k, C))  # (n, k, heads, e) -> (n, k, C)
        y = tokens + attended
        return y + self.mlp(self.norm2(y))

    def forward(self, x: Tensor, chunk: int = 0, out: Optional[Tensor] = None) -> Tensor:
        """(B, K, C, h, w) -> (B, K, C, h, w); ``chunk`` classes at a time (0 = all), same result. ``out``: where
        the result goes (may be ``x`` itself: at test time the pixel blocks overwrite their input in place)."""
        if self.pixel_blocks and self.pool == 1 and not torch.is_grad_enabled():
            return self._forward_pixel_blocks(x, out)
        y = self._forward_class_chunks(x, chunk)
        return y if out is None else out.copy_(y)

    def _forward_pixel_blocks(self, x: Tensor, out: Optional[Tensor]) -> Tensor:
        """The test-time path (module doc): every block of positions, all K classes at once."""
        B, K, C, h, w = x.shape
        if out is None or not is_channels_last_per_class(out):
            dest = class_maps(B, K, C, h, w, x)
            result = dest if out is None else out
        else:
            dest = result = out
        source = x.permute(0, 1, 3, 4, 2)  # (B, K, h, w, C): each class map with its channels last
        target = dest.permute(0, 1, 3, 4, 2)  # (B, K, h, w, C), a view of the channels-last result
        block = max(1, PIXEL_BLOCK.get(x.device.type, PIXEL_BLOCK["cuda"]) // (K * C))  # positions per block
        e = C // self.heads
        heads = torch.block_diag(*[x.new_ones(e, e)] * self.heads)  # (C, C): 1 where two channels share a head
        w_qkv = torch.cat([self.q.weight, self.k.weight, self.v.weight])  # (3C, C): one product for q, k, v
        b_qkv = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        rows = max(1, block // w)  # when x is not channels-last: whole rows, so that only a block is reordered
        for b in range(B):
            written = target[b].view(K, h * w, C)  # always a view: dest is channels-last per class
            if is_channels_last_per_class(x):
                tokens = source[b].view(K, h * w, C)  # (K, h, w, C) -> (K, h*w, C), a view
                for p in range(0, h * w, block):
                    written[:, p : p + block] = self._attend_block(tokens[:, p : p + block], w_qkv, b_qkv, heads)
            else:
                for r in range(0, h, rows):
                    tokens = source[b, :, r : r + rows].reshape(K, -1, C)  # (K, rows, w, C) -> (K, rows*w, C): a copy
                    n = tokens.shape[1]
                    written[:, r * w : r * w + n] = self._attend_block(tokens, w_qkv, b_qkv, heads)
        return result if result is dest else result.copy_(dest)

    def _attend_block(self, tokens: Tensor, w_qkv: Tensor, b_qkv: Tensor, heads: Tensor) -> Tensor:
        """Attention + MLP of the tokens of n positions, (K, n, C) -> the block's output (K, n, C). The per-head
        sums are taken as full C x C products masked to the heads' diagonal blocks: two batched matrix products
        over the positions, without reordering the tokens."""
        C = tokens.shape[-1]
        t = self.norm1(tokens)
        qkv = F.linear(t, w_qkv, b_qkv)  # (K, n, 3C)
        qk = elu_plus_one(qkv[..., : 2 * C])  # φ(q), φ(k): (K, n, 2C)
        query, key = qk[..., :C].transpose(0, 1), qk[..., C:].transpose(0, 1)  # (n, K, C)
        value = qkv[..., 2 * C :].transpose(0, 1)  # (n, K, C)
        kv = torch.bmm(key.transpose(1, 2), value).mul_(heads)  # Σ_k φ(k) vᵀ per position: (n, C, C)
        z = key.sum(dim=1).unsqueeze(-1) * heads  # Σ_k φ(k), spread over its head: (n, C, C)
        num_den = torch.bmm(query, torch.cat([kv, z], dim=2))  # (n, K, C) · (n, C, 2C) -> (n, K, 2C)
        attended = self.out((num_den[..., :C] / (num_den[..., C:] + 1e-6)).transpose(0, 1))  # (n, K, C) -> (K, n, C)
        y = tokens + attended
        return self._block_output(tokens, y + self.mlp(self.norm2(y)))

    def _block_output(self, tokens: Tensor, y: Tensor) -> Tensor:
        """What a block writes: the tokens after attention and MLP (the residual is inside)."""
        return y

    def _forward_class_chunks(self, x: Tensor, chunk: int) -> Tensor:
        """The two sweeps over class chunks (training, pooling): the reference."""
        B, K, C, h, w = x.shape
        pieces = class_chunks(K, chunk)
        kv: Optional[Tensor] = None
        z: Optional[Tensor] = None
        for s in pieces:  # sweep 1: global key/value statistics over all classes
            kv_s, z_s = self._keys_values(self._tokens(x[:, s]))
            kv, z = (kv_s, z_s) if kv is None or z is None else (kv + kv_s, z + z_s)
        assert kv is not None and z is not None, "class_chunks gives at least one chunk"
        out = []
        for s in pieces:  # sweep 2: each class chunk reads the global statistics
            delta = self._update(self._tokens(x[:, s]), kv, z)  # (B*h'*w', k, C)
            hp, wp = self._pooled_size(h, w) if self.pool > 1 else (h, w)
            k = s.stop - s.start
            delta = delta.view(B, hp, wp, k, C).permute(0, 3, 4, 1, 2)  # -> (B, k, C, h', w')
            if self.pool > 1:
                delta = self._unpool(delta.reshape(B * k, C, hp, wp), (h, w))  # (B*k, C, h', w') -> (B*k, C, h, w)
                delta = delta.view(B, k, C, h, w)
            out.append(x[:, s] + delta)
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)


class SEDClassAggregation(ClassAggregation):
    """SED's class-attention layer. The same linear attention across classes, with SED's details:

    * no output projection after the attention, and a ReLU (not GELU) in the MLP;
    * pooling drops partial windows at the border (floor) and unpooling interpolates with ``align_corners=True``;
    * the residual: SED adds the attention+MLP result *including its own residual* (the pooled input) back to the
      input, so the input is added twice (at pooling 1: ``2 x + attention + MLP``). With SED's weights this is
      what SED computes; a standard residual would change its logits by about 1 (measured on the test fixture).
    """

    def _output_projection(self, dim: int) -> nn.Module:
        return nn.Identity()

    def _activation(self) -> nn.Module:
        return nn.ReLU()

    def _pooled_size(self, h: int, w: int) -> tuple[int, int]:
        return h // self.pool, w // self.pool

    def _pool_map(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.pool)

    def _unpool(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    def _update(self, tokens: Tensor, kv: Tensor, z: Tensor) -> Tensor:
        return self._attend(tokens, kv, z)  # not minus the tokens: the caller adds the input once more (class doc)

    def _block_output(self, tokens: Tensor, y: Tensor) -> Tensor:
        return tokens + y  # the input added once more (class doc)


def elu_plus_one(t: Tensor) -> Tensor:
    """φ(t) = elu(t) + 1 = t + 1 above 0 and exp(t) below (equal up to rounding; torch's CPU elu is ~10x slower
    than exp)."""
    return torch.exp(t.clamp(max=0)).add_(t.clamp(min=0))
