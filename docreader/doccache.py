"""The document prefix on disk: the KV cache and the indexer's key cache up to the end of the document.

Why: every `docreader ask` re-reads the whole document (a minute for a contract, many for a book on a laptop
CPU) even when the same document was read a moment ago. The prefix is a pure function of what produced it,
so it is stored under a key of all of that and the next process starts from it, prefilling only the question.

- Key: the model and its weights (base files' sizes and mtimes, the adapter's and indexer's sha256), the DSA
  config, attention mode, RoPE factor, KV dtype, the code that computes attention, and the sha256 of the
  prompt's token ids up to the end of the document (system prompt, template and document text all change them).
- Entry: one file in safetensors' layout (written and read a tensor at a time, see `_write`), `k.{layer}` / `v.{layer}` [B, Hkv, L, D] in the dtype the live cache stores
  and `ik.{layer}` [B, L, d] (the sparse layers' indexer keys), exactly as computed, so that a cached answer
  is the uncached one; the key and token count ride in its metadata and are checked on load.
- Written to a temporary file and renamed (readers never see half a file; two writers of one entry both leave
  a whole one). A corrupt, truncated or mismatched entry is deleted with one note and recomputed; a cache
  that cannot be written (read-only, disk full) costs a note, never the answer.
- Bounded: past $DOCREADER_CACHE_MB (default 8192: a whole novel takes ~4.5 GB) the least recently used entries go.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .home import home, write_atomically

FORMAT = 1
SIZE_ENV = "DOCREADER_CACHE_MB"
DEFAULT_MB = 8192
SUFFIX = ".safetensors"


def _warn(msg: str) -> None:
    import warnings
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


# Where the cache's one-line messages go. note: something went wrong and was worked around (a warning for a
# library user; the CLI prints the line); info: the cache was used (silent unless the CLI asks for it).
note: Callable[[str], None] = _warn
info: Callable[[str], None] = lambda msg: None


def cache_dir() -> Path:
    return home() / "cache"


def limit_bytes() -> int:
    raw = os.environ.get(SIZE_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MB
    except ValueError:
        from .errors import DocreaderError
        raise DocreaderError(f"{SIZE_ENV} must be a number of megabytes, got {raw!r}") from None
    return int(max(mb, 0) * 2**20)


def make_key(parts: dict, prefix_ids: list[int]) -> tuple[str, str]:
    """-> (file name stem, the key as canonical JSON). parts: everything besides the prompt that changes the
    prefix's K/V; prefix_ids: the prompt's token ids up to the end of the document."""
    ids = hashlib.sha256(json.dumps(prefix_ids, separators=(",", ":")).encode()).hexdigest()
    key = json.dumps({**parts, "prefix_sha256": ids, "prefix_tokens": len(prefix_ids), "format": FORMAT},
                     sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:40], key


@dataclass
class Entry:
    path: Path
    bytes: int
    tokens: int
    document: str
    model: str
    used: float  # last use (the file's mtime)


# -- the file: safetensors' layout, written and read one tensor at a time --------------------------------
# (safetensors' own save_file wants every tensor contiguous at once, a second copy of a whole book's cache
# (4.5 GB); its loader maps the whole file, which then counts in the process's resident memory)

_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_MAX_HEADER = 1 << 24


def _write(path: str, tensors: dict, meta: dict[str, str]) -> None:
    """tensors: name -> tensor (views allowed); one contiguous copy at a time goes to the file."""
    import torch
    names = {v: k for k, v in _DTYPES.items()}
    header, off = {}, 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        header[name] = {"dtype": names[str(t.dtype).removeprefix("torch.")], "shape": list(t.shape),
                        "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f, torch.inference_mode(False):
        f.write(struct.pack("<Q", len(raw)) + raw)
        for t in tensors.values():
            f.write(memoryview(t.contiguous().view(torch.uint8).numpy()).cast("B"))


def _header(f) -> tuple[dict, int]:
    """-> (header, offset of the data) of an open entry; ValueError when it cannot be one."""
    (n,) = struct.unpack("<Q", f.read(8).ljust(8, b"\xff"))
    if n > _MAX_HEADER:
        raise ValueError("not a cache entry (bad header)")
    header = json.loads(f.read(n))
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise ValueError("not a cache entry (no metadata)")
    return header, 8 + n


def _dtype(info: dict):
    import torch
    return getattr(torch, _DTYPES[info["dtype"]])


def _read(f, base: int, info: dict):
    """One tensor of the entry, read straight into fresh memory."""
    import torch
    t = torch.empty(info["shape"], dtype=_dtype(info))
    _read_into(f, base, info, t)
    return t


def _read_into(f, base: int, info: dict, dst) -> None:
    """One tensor of the entry into `dst` (its shape and dtype), whose last two dims are contiguous rows: a
    view of a preallocated cache buffer is filled head by head, with no staging copy (0.3 s of a served answer)."""
    import torch
    s, e = info["data_offsets"]
    if list(dst.shape) != info["shape"] or dst.numel() * dst.element_size() != e - s:
        raise ValueError("a tensor's size does not match its shape")
    f.seek(base + s)
    for part in dst.view(-1, *dst.shape[-2:]).unbind(0) if dst.dim() > 2 else [dst]:
        n = part.numel() * part.element_size()
        if f.readinto(memoryview(part.view(torch.uint8).numpy()).cast("B")) != n:
            raise ValueError("the file is truncated")


def save(stem: str, key: str, cache, tokens: int, label: dict) -> Path | None:
    """Write the first `tokens` positions of a dsa.DSACache as entry `stem`; None (after a note) when the
    cache dir cannot take it. label: shown by `docreader cache list` (document path, model)."""
    tensors = {}
    for i, layer in enumerate(cache.layers):
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            return None  # a layer without K/V: not a prefix this module knows how to restore
        tensors[f"k.{i}"] = layer.keys[..., :tokens, :]
        tensors[f"v.{i}"] = layer.values[..., :tokens, :]
    for i, ik in enumerate(cache.index_keys):
        if len(ik):
            tensors[f"ik.{i}"] = ik.keys.view[:, :tokens]
    meta = {"key": key, "tokens": str(tokens), "format": str(FORMAT), "document": str(label.get("document", "")),
            "model": str(label.get("model", ""))}
    d = cache_dir()
    path = d / f"{stem}{SUFFIX}"
    try:
        write_atomically(path, lambda tmp: _write(tmp, tensors, meta))  # a reader sees the old entry, the new one, or none
    except OSError as e:
        note(f"the document cache could not be written ({d}: {e.strerror or e}); answers still work, uncached")
        return None
    evict(limit_bytes(), keep=path)
    return path


def load(stem: str, key: str, tokens: int, make_cache) -> object | None:
    """The cache of entry `stem` (make_cache() gives an empty dsa.DSACache to fill), or None: absent, or
    unusable (deleted after one note: corrupt, truncated, another key, other shapes or dtypes). Not trusted
    blindly: a crash can leave a renamed but unflushed file, so sizes and the key are checked."""
    import torch

    path = cache_dir() / f"{stem}{SUFFIX}"
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            header, base = _header(f)
            meta = header["__metadata__"]
            if meta.get("key") != key or int(meta.get("tokens", -1)) != tokens:
                raise ValueError("it was made for another model, config or prompt")
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if os.fstat(f.fileno()).st_size != base + end:
                raise ValueError("the file is truncated")
            cache = make_cache()
            with torch.inference_mode():
                for i, layer in enumerate(cache.layers):
                    hk, hv = header[f"k.{i}"], header[f"v.{i}"]
                    if len(hk["shape"]) != 4 or hk["shape"][-2] != tokens or hv["shape"] != hk["shape"]:
                        raise ValueError(f"layer {i} holds {hk['shape']} K/V, not {tokens} positions")
                    want = layer._k.dtype or _dtype(hk)
                    if _dtype(hk) != want or _dtype(hv) != want:
                        raise ValueError(f"layer {i} is stored as {_dtype(hk)}, the cache holds {want}")
                    k, v = layer.extend(torch.Size(hk["shape"]), want)
                    _read_into(f, base, hk, k)
                    _read_into(f, base, hv, v)
                for i, ik in enumerate(cache.index_keys):
                    if f"ik.{i}" in header:
                        keys = _read(f, base, header[f"ik.{i}"])
                        if keys.shape[1] != tokens:
                            raise ValueError(f"indexer keys of layer {i} hold {keys.shape[1]} positions")
                        ik.append(keys)
    except Exception as e:  # noqa: BLE001 - any unreadable entry is recomputed, never trusted
        msg = (str(e).splitlines() or [type(e).__name__])[0][:160]
        note(f"discarded the cached read of this document ({path.name}: {msg}); reading it again")
        try:
            path.unlink()
        except OSError:
            pass
        return None
    try:
        os.utime(path)  # least recently used goes first
    except OSError:
        pass
    return cache


def entries() -> list[Entry]:
    """Whole entries in the cache dir, most recently used first (unreadable headers are listed as unknown)."""
    out = []
    d = cache_dir()
    for p in d.glob(f"*{SUFFIX}") if d.exists() else []:
        try:
            st = p.stat()
        except OSError:
            continue
        try:
            with open(p, "rb") as f:
                meta = _header(f)[0]["__metadata__"]
        except Exception:  # noqa: BLE001 - listed as unknown; a load discards it
            meta = {}
        out.append(Entry(p, st.st_size, int(meta.get("tokens", 0) or 0), meta.get("document", "?"),
                         meta.get("model", "?"), st.st_mtime))
    return sorted(out, key=lambda e: -e.used)


def evict(limit: int, keep: Path | None = None) -> list[Path]:
    """Delete least recently used entries until the cache holds at most `limit` bytes (never `keep`, the entry
    just written, unless it alone is over the limit), and temporary files killed writers left an hour ago."""
    removed = []
    d = cache_dir()
    now = time.time()
    for tmp in d.glob(".*.tmp") if d.exists() else []:
        try:
            if now - tmp.stat().st_mtime > 3600:
                tmp.unlink()
        except OSError:
            pass
    es = entries()
    total = sum(e.bytes for e in es)
    for e in reversed(es):  # oldest first; the entry just written last of all
        if total <= limit:
            break
        if keep is not None and e.path == keep:
            continue
        total -= _unlink(e, removed)
    if total > limit and keep is not None:  # it alone is over the limit
        for e in es:
            if e.path == keep:
                _unlink(e, removed)
    return removed


def _unlink(e: Entry, removed: list[Path]) -> int:
    try:
        e.path.unlink()
    except OSError:
        return 0
    removed.append(e.path)
    return e.bytes


def clear() -> int:
    """Delete every entry; -> bytes freed."""
    freed = 0
    for e in entries():
        try:
            e.path.unlink()
            freed += e.bytes
        except OSError:
            pass
    return freed
