"""Caches for DSA decoding: a KV cache that grows in place, and the indexer's own key cache beside it.

transformers' DynamicLayer concatenates on every step, copying the whole cache per token per layer; at
32k tokens that copy costs more than the sparse attention itself. `GrowLayer` keeps a buffer with
doubling capacity and hands out views, so appending a token is O(1) amortised.
"""

from __future__ import annotations

import inspect

import torch
from transformers import LlamaForCausalLM
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

# transformers 5.2x renamed the model's `past_key_values` argument and output field to `cache`
CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def cache_arg(cache: Cache | None) -> dict:
    """`model(ids, **cache_arg(cache))` passes a cache under the name this transformers version takes."""
    return {CACHE_ARG: cache}


def output_cache(out) -> Cache | None:
    """The cache a forward returned, under either name."""
    return getattr(out, "cache", None) if CACHE_ARG == "cache" else out.past_key_values


class GrowBuffer:
    """A [B, ..., L, D] tensor along dim -2 with amortised O(1) append; `view` is [..., :length, :]."""

    def __init__(self) -> None:
        self.buf: torch.Tensor | None = None
        self.length = 0

    def append(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-2]
        if self.buf is None or self.length + n > self.buf.shape[-2]:
            cap = max(256, 2 * (self.length + n))
            new = x.new_empty(*x.shape[:-2], cap, x.shape[-1])
            if self.buf is not None:
                new[..., : self.length, :] = self.buf[..., : self.length, :]
            self.buf = new
        self.buf[..., self.length : self.length + n, :] = x
        self.length += n
        return self.view

    @property
    def view(self) -> torch.Tensor:
        return self.buf[..., : self.length, :]

    def crop(self, n_remove: int) -> None:
        self.length = max(0, self.length - n_remove)


class GrowLayer(DynamicLayer):
    """A DynamicLayer whose update appends into a growing buffer instead of torch.cat."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k, self._v = GrowBuffer(), GrowBuffer()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = self._k.append(key_states)
        self.values = self._v.append(value_states)
        return self.keys, self.values

    def gather(self, b: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [Hkv, T, D] at positions `tokens` of batch row b, read from the contiguous
        buffers: index_select on the strided `keys` view would first copy the whole view."""
        return self._k.buf[b].index_select(1, tokens), self._v.buf[b].index_select(1, tokens)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self._k.crop(abs(tokens_to_remove))
        self._v.crop(abs(tokens_to_remove))
        self.keys, self.values = self._k.view, self._v.view


class IndexerKeys:
    """One sparse layer's indexer keys [B, L, d] plus running per-block sums for stage-1 block scoring."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.keys = GrowBuffer()
        self.block_sums = GrowBuffer()  # [B, n_blocks, d] fp32

    def __len__(self) -> int:
        return self.keys.length

    def append(self, k: torch.Tensor) -> torch.Tensor:
        """k [B, n, d] -> all keys [B, L, d]; refreshes the sums of the blocks the new keys touched."""
        start = self.keys.length
        keys = self.keys.append(k)
        bs, L = self.block_size, keys.shape[1]
        first = start // bs  # first block whose sum changes
        have = self.block_sums.length
        self.block_sums.crop(have - min(have, first))
        tail = keys[:, first * bs :].float()  # [B, L - first*bs, d]
        pad = (-tail.shape[1]) % bs
        tail = torch.nn.functional.pad(tail, (0, 0, 0, pad))
        self.block_sums.append(tail.view(tail.shape[0], -1, bs, tail.shape[-1]).sum(2))
        return keys

    def block_means(self) -> torch.Tensor:
        """[B, n_blocks, d]: mean indexer key of each block (the last block over its filled part)."""
        L, bs = self.keys.length, self.block_size
        sums = self.block_sums.view
        counts = torch.full((sums.shape[1],), float(bs), device=sums.device)
        counts[-1] = L - (sums.shape[1] - 1) * bs
        return sums / counts[None, :, None]

    def crop(self, n_remove: int) -> None:
        self.keys.crop(n_remove)
        nb = -(-self.keys.length // self.block_size)
        self.block_sums.crop(self.block_sums.length - nb)
        if self.keys.length % self.block_size:  # the now-partial last block must be re-summed
            last = nb - 1
            tail = self.keys.view[:, last * self.block_size :].float().sum(1, keepdim=True)
            self.block_sums.crop(1)
            self.block_sums.append(tail)


class DSACache(DynamicCache):
    """KV cache in growing buffers + per-layer indexer keys. Pass it with `cache_arg(cache)` to a DSA model."""

    def __init__(self, num_layers: int, block_size: int = 64) -> None:
        Cache.__init__(self, layers=[GrowLayer() for _ in range(num_layers)])
        self.index_keys = [IndexerKeys(block_size) for _ in range(num_layers)]

    @torch.inference_mode()  # caches filled under inference mode hold inference tensors
    def crop(self, max_length: int) -> None:
        n_remove = self.get_seq_length() - max_length
        if n_remove <= 0:
            return
        for layer, ik in zip(self.layers, self.index_keys):
            layer.crop(-n_remove)
            if len(ik):
                ik.crop(n_remove)
