"""Caches for DSA decoding: a KV cache that is allocated once (or grows in place), and the indexer's own key
cache beside it.

transformers' DynamicLayer concatenates on every step, copying the whole cache per token per layer; at
32k tokens that copy costs more than the sparse attention itself. `GrowBuffer` hands out views of one buffer.
When the final length is known (prompt + most new tokens: `capacity`, or `reserve` later) the buffer is
allocated once at that size, so a 256k-token prefill never holds an old and a doubled buffer at once; past
it, appending still works (the buffer doubles, with one copy).

K/V can be stored in another dtype than the model computes in (`kv_dtype`, e.g. bfloat16: half the memory of
fp32). The sparse layers' K/V is read only by the CPU kernel (which converts bf16 rows as it loads them) or
gathered a few hundred rows at a time (and upcast); layers that attend densely keep the model's dtype, because
dense attention reads all of their K/V on every step and would have to upcast it whole.
"""

from __future__ import annotations

import inspect
from typing import Iterable

import torch
from transformers import LlamaForCausalLM
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

# transformers 5.2x renamed the model's `past_key_values` argument and output field to `cache`
CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
MIN_ROWS = 256  # smallest allocation when the capacity is unknown


def cache_arg(cache: Cache | None) -> dict:
    """`model(ids, **cache_arg(cache))` passes a cache under the name this transformers version takes."""
    return {CACHE_ARG: cache}


def output_cache(out) -> Cache | None:
    """The cache a forward returned, under either name."""
    return getattr(out, "cache", None) if CACHE_ARG == "cache" else out.past_key_values


class GrowBuffer:
    """A [B, ..., L, D] tensor along dim -2; `view` is [..., :length, :].

    The first append allocates `capacity` rows when that many are known to come (no copy ever, up to it), else
    twice what it holds; appending past the allocation doubles it (amortised O(1)). Rows are stored in `dtype`
    when given, else in the dtype of the first append."""

    def __init__(self, capacity: int | None = None, dtype: torch.dtype | None = None) -> None:
        self.buf: torch.Tensor | None = None
        self.length = 0
        self.capacity = capacity or 0
        self.dtype = dtype

    def append(self, x: torch.Tensor) -> torch.Tensor:
        self.extend(x.shape, x.dtype, x.device).copy_(x)  # casts to the buffer's dtype
        return self.view

    def extend(self, shape: torch.Size, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
        """Room for rows of `shape` [..., n, D] at the end: -> their (uninitialised) view, to be written in place,
        e.g. straight from a file with no staging copy (docreader's document cache)."""
        n = shape[-2]
        need = self.length + n
        if self.buf is None:
            rows = self.capacity if self.capacity >= need else max(MIN_ROWS, 2 * need)
            self.buf = torch.empty(*shape[:-2], rows, shape[-1], dtype=self.dtype or dtype, device=device)
        elif need > self.buf.shape[-2]:
            self._realloc(max(MIN_ROWS, 2 * need))
        rows = self.buf[..., self.length : need, :]
        self.length = need
        return rows

    def reserve(self, capacity: int) -> None:
        """Make room for `capacity` rows in one allocation (one copy if rows are already held)."""
        self.capacity = max(self.capacity, capacity)
        if self.buf is not None and capacity > self.buf.shape[-2]:
            self._realloc(capacity)

    def _realloc(self, rows: int) -> None:
        with torch.inference_mode(self.buf.is_inference()):  # the new buffer is of the same kind as the old
            new = self.buf.new_empty(*self.buf.shape[:-2], rows, self.buf.shape[-1])
            new[..., : self.length, :] = self.buf[..., : self.length, :]
        self.buf = new

    @property
    def view(self) -> torch.Tensor:
        return self.buf[..., : self.length, :]

    def crop(self, n_remove: int) -> None:
        self.length = max(0, self.length - n_remove)


class GrowLayer(DynamicLayer):
    """A DynamicLayer whose update appends into a `GrowBuffer` (optionally preallocated, optionally stored in
    `dtype`) instead of torch.cat. `keys` / `values` are views in the stored dtype."""

    def __init__(self, capacity: int | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self._k, self._v = GrowBuffer(capacity, dtype), GrowBuffer(capacity, dtype)

    def reset(self) -> None:
        super().reset()
        self._k = GrowBuffer(self._k.capacity, self._k.dtype)
        self._v = GrowBuffer(self._v.capacity, self._v.dtype)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = self._k.append(key_states)
        self.values = self._v.append(value_states)
        return self.keys, self.values

    def extend(self, shape: torch.Size, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Room for K and V rows of `shape` [B, Hkv, n, D] (CPU, stored as `dtype`): -> their views, to fill in
        place (see GrowBuffer.extend); afterwards the layer holds them as if `update` had appended them."""
        if not self.is_initialized:
            empty = torch.empty(0, dtype=dtype)
            self.lazy_initialization(empty, empty)
        k, v = self._k.extend(shape, dtype), self._v.extend(shape, dtype)
        self.keys, self.values = self._k.view, self._v.view
        return k, v

    def reserve(self, capacity: int) -> None:
        self._k.reserve(capacity)
        self._v.reserve(capacity)
        if self.is_initialized and self._k.buf is not None:  # views of the old buffers would keep them alive
            self.keys, self.values = self._k.view, self._v.view

    def gather(self, b: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [Hkv, T, D] at positions `tokens` of batch row b, read from the contiguous
        buffers (in the stored dtype): index_select on the strided `keys` view would first copy the whole view."""
        return self._k.buf[b].index_select(1, tokens), self._v.buf[b].index_select(1, tokens)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self._k.crop(abs(tokens_to_remove))
        self._v.crop(abs(tokens_to_remove))
        self.keys, self.values = self._k.view, self._v.view


class IndexerKeys:
    """One sparse layer's indexer keys [B, L, d] plus running per-block sums for stage-1 block scoring."""

    def __init__(self, block_size: int, capacity: int | None = None) -> None:
        self.block_size = block_size
        self.keys = GrowBuffer(capacity)
        self.block_sums = GrowBuffer(self._blocks(capacity))  # [B, n_blocks, d] fp32

    def _blocks(self, tokens: int | None) -> int | None:
        return -(-tokens // self.block_size) if tokens else None

    def __len__(self) -> int:
        return self.keys.length

    def reserve(self, capacity: int) -> None:
        self.keys.reserve(capacity)
        self.block_sums.reserve(self._blocks(capacity))

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
    """KV cache in growing buffers + per-layer indexer keys. Pass it with `cache_arg(cache)` to a DSA model.

    capacity: tokens to allocate every buffer for at once (prompt + most new tokens), when known.
    kv_dtype: the dtype K/V are stored in (None: the model's), except in `full_layers` (the dense layers,
    which keep the model's dtype: see the module docstring)."""

    def __init__(self, num_layers: int, block_size: int = 64, capacity: int | None = None,
                 kv_dtype: torch.dtype | None = None, full_layers: Iterable[int] = ()) -> None:
        full = set(full_layers)
        Cache.__init__(self, layers=[GrowLayer(capacity, None if i in full else kv_dtype) for i in range(num_layers)])
        self.index_keys = [IndexerKeys(block_size, capacity) for _ in range(num_layers)]

    def reserve(self, capacity: int) -> None:
        """Room for `capacity` tokens in every buffer, allocated now (or at the first append): one copy of what
        is held instead of doublings, e.g. before a longer follow-up prompt reuses a document's cache."""
        for layer, ik in zip(self.layers, self.index_keys):
            layer.reserve(capacity)
            ik.reserve(capacity)

    @torch.inference_mode()  # caches filled under inference mode hold inference tensors
    def crop(self, max_length: int) -> None:
        n_remove = self.get_seq_length() - max_length
        if n_remove <= 0:
            return
        for layer, ik in zip(self.layers, self.index_keys):
            layer.crop(-n_remove)
            if len(ik):
                ik.crop(n_remove)
