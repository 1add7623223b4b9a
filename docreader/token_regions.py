"""Per answer token: which parts of the document the indexer selected while that token was generated.

The audit page (`docreader audit ID --html`) lets a reader click a word of the answer and see the document
excerpts the sparse layers picked when the model produced it. Keeping every layer's top-k for every answer
token would cost megabytes per answer, so `TokenCapture` folds the selections, as they stream past during
generation, into one row per answer token over *blocks* of `BLOCK_TOKENS` document tokens (the average
selection share each block received over the sparse layers), and `finish` keeps only each token's `TOP`
heaviest blocks, quantised to a byte. Beside them go the block boundaries (character offsets, so the page
needs no tokenizer), a byte of document-wide heat per block (question and answer queries together, capped as
the ranked spans are) and where each token ends in the answer text. All of it is one zlib blob in the log's
`token_regions` table (migration `m007_token_regions`): 1,459 bytes for a 34-token answer about the sample
contract (README, "Seeing where an answer came from").
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from .prompt import Prompt

BLOCK_TOKENS = 32  # a block is about a sentence: fine enough to point at, coarse enough to stay small
TOP = 8  # blocks kept per answer token
VERSION = 1
_HEADER = struct.Struct("<4sBBHII")  # magic, version, top, block_tokens, blocks, tokens
_MAGIC = b"DRTR"


@dataclass
class TokenRegions:
    """What the audit page needs to replay the indexer's selections token by token."""

    block_tokens: int
    bounds: np.ndarray  # [blocks + 1] int64: block b covers document chars [bounds[b], bounds[b + 1])
    heat: np.ndarray  # [blocks] uint8: sqrt-scaled share of the whole answer's selection (255 = the heaviest)
    token_ends: np.ndarray  # [tokens] int64: where each answer token ends in the answer text
    picks: np.ndarray  # [tokens, TOP] int64 block indices, heaviest first
    weights: np.ndarray  # [tokens, TOP] uint8: the block's share relative to the token's heaviest (0 = none)

    @property
    def blocks(self) -> int:
        return len(self.heat)

    @property
    def tokens(self) -> int:
        return len(self.token_ends)

    def encode(self) -> bytes:
        """One compact blob: little-endian arrays after a header, zlib-compressed (level 9)."""
        top = self.picks.shape[1] if self.picks.ndim == 2 else TOP
        idx = "<u2" if self.blocks < 0xFFFF else "<u4"
        parts = [_HEADER.pack(_MAGIC, VERSION, top, self.block_tokens, self.blocks, self.tokens),
                 np.diff(self.bounds).astype("<u4").tobytes(), struct.pack("<I", int(self.bounds[0])),
                 self.heat.astype(np.uint8).tobytes(), np.diff(self.token_ends, prepend=0).astype("<u4").tobytes(),
                 self.picks.astype(idx).tobytes(),
                 self.weights.astype(np.uint8).tobytes()]
        return zlib.compress(b"".join(parts), 9)

    @classmethod
    def decode(cls, blob: bytes) -> "TokenRegions":
        """The inverse of `encode`; ValueError for a blob that is not one (damaged or from a newer version)."""
        try:
            raw = zlib.decompress(blob)
            magic, version, top, block_tokens, blocks, tokens = _HEADER.unpack_from(raw)
        except (zlib.error, struct.error, TypeError) as e:
            raise ValueError(f"unreadable token regions ({e})") from None
        if magic != _MAGIC or version != VERSION:
            raise ValueError(f"unknown token-regions format {magic!r} v{version}")
        idx = "<u2" if blocks < 0xFFFF else "<u4"
        sizes = [(blocks, "<u4"), (1, "<u4"), (blocks, "u1"), (tokens, "<u4"), (tokens * top, idx),
                 (tokens * top, "u1")]
        arrays, at = [], _HEADER.size
        for count, dtype in sizes:
            a = np.frombuffer(raw, dtype=dtype, count=count, offset=at)
            arrays.append(a)
            at += a.nbytes
        if at != len(raw):
            raise ValueError("token regions have the wrong length")
        steps, first, heat, ends, picks, weights = arrays
        bounds = np.concatenate([first.astype(np.int64), int(first[0]) + np.cumsum(steps, dtype=np.int64)])
        return cls(block_tokens, bounds, heat.copy(), np.cumsum(ends, dtype=np.int64),
                   picks.astype(np.int64).reshape(tokens, top), weights.reshape(tokens, top).copy())


class TokenCapture:
    """Folds the selections of the answer's queries into [answer token, document block] weights as they stream
    past (`SelectionAccumulator(per_query=capture.add)`): one index_add per layer and step, no selections kept.

    The query at prompt position len(input_ids) - 1 + i predicts answer token i, so its selections are what
    the indexer chose "while token i was generated"."""

    def __init__(self, prompt: Prompt, max_new_tokens: int, block_tokens: int = BLOCK_TOKENS):
        self.first = len(prompt.input_ids) - 1
        self.doc_start, self.doc_end = prompt.doc_start, prompt.doc_end
        self.block_tokens = block_tokens
        self.n_blocks = max(1, -(-(self.doc_end - self.doc_start) // block_tokens))
        # prompt position -> 1 + its document block, 0 (a discarded column) for every key outside the document;
        # keys past the document are clamped onto doc_end, which maps to 0 too
        self.column = torch.zeros(self.doc_end + 1, dtype=torch.long)
        self.column[self.doc_start : self.doc_end] = 1 + torch.arange(self.doc_end - self.doc_start) // block_tokens
        rows = min(max_new_tokens + 1, 64)  # grows as tokens come: max_new_tokens may be huge
        self.w = torch.zeros(rows, self.n_blocks + 1, dtype=torch.float64)
        self.layers = [0] * rows

    def _grow(self, need: int) -> None:
        if need > self.w.shape[0]:
            grow = max(need, 2 * self.w.shape[0]) - self.w.shape[0]
            self.w = torch.cat([self.w, self.w.new_zeros(grow, self.n_blocks + 1)])
            self.layers += [0] * grow

    def add(self, qpos: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> None:
        """One layer's selections for queries `qpos` [C]: keys `idx` [C, K] (>= 0) with `weight` [C, K]."""
        if qpos.shape[0] == 1:  # a decode step: one query, three tensor ops (it runs per layer per token)
            q = int(qpos[0]) - self.first
            if q < 0:
                return
            self._grow(q + 1)
            self.w[q].index_add_(0, self.column[idx[0].clamp(max=self.doc_end)], weight[0].double())
            self.layers[q] += 1
            return
        for row, q in enumerate((qpos - self.first).tolist()):  # the prefill chunk holding the last prompt token
            if q >= 0:
                self.add(torch.tensor([q + self.first]), idx[row : row + 1], weight[row : row + 1])

    def finish(self, prompt: Prompt, text_len: int, token_ends: list[int], doc_weights: torch.Tensor | None,
               doc_chars: int, top: int = TOP) -> TokenRegions:
        """Keep each token's `top` blocks; `token_ends`: where each generated token ends in the answer text;
        `doc_weights`: per document token (`provenance.capped_doc_weights`) for the heat map."""
        n = min(len(token_ends), self.w.shape[0])
        w = (self.w[:n, 1:] / torch.tensor(self.layers[:n], dtype=torch.float64).clamp(min=1)[:, None]).float()
        k = min(top, self.n_blocks)
        vals, picks = w.topk(k, dim=1) if n else (w.new_zeros(0, k), torch.zeros(0, k, dtype=torch.long))
        rel = vals / vals[:, :1].clamp(min=1e-12)
        weights = torch.where(vals > 0, (rel * 255).round().clamp(1, 255), torch.zeros_like(rel))
        if k < top:  # a document of fewer blocks than `top`: pad with empty picks
            pad = top - k
            picks = torch.cat([picks, picks.new_zeros(n, pad)], 1)
            weights = torch.cat([weights, weights.new_zeros(n, pad)], 1)
        heat = np.zeros(self.n_blocks, dtype=np.uint8)
        if doc_weights is not None and doc_weights.numel():
            pad = self.n_blocks * self.block_tokens - doc_weights.shape[0]
            per_block = torch.cat([doc_weights.double(), doc_weights.new_zeros(pad, dtype=torch.float64)])
            per_block = per_block.view(self.n_blocks, self.block_tokens).sum(1)
            if float(per_block.max()) > 0:
                heat = (255 * (per_block / per_block.max()).sqrt()).round().to(torch.uint8).numpy()
        starts = [prompt.doc_offsets[b * self.block_tokens][0] for b in range(1, self.n_blocks)]
        bounds = np.maximum.accumulate(np.array([0, *starts, doc_chars], dtype=np.int64))
        ends = np.minimum(np.maximum.accumulate(np.array(token_ends[:n], dtype=np.int64)), text_len)
        return TokenRegions(self.block_tokens, bounds, heat, ends, picks.numpy().astype(np.int64),
                            weights.to(torch.uint8).numpy())


def token_ends(tokenizer, token_ids: list[int], text: str) -> list[int]:
    """Where each generated token ends in `text` (the decoded answer with its outer whitespace stripped):
    the decoded length of each prefix, less the whitespace the strip removed from the front."""
    lead = None
    ends = []
    for i in range(1, len(token_ids) + 1):
        piece = tokenizer.decode(token_ids[:i], skip_special_tokens=True)
        if lead is None and piece.strip():
            lead = len(piece) - len(piece.lstrip())
        ends.append(max(0, min(len(text), len(piece) - (lead or 0))))
    return ends


def log_row(regions: TokenRegions | None) -> dict | None:
    """The `token_regions` row for `store.save_answer` (None: nothing to store)."""
    if regions is None:
        return None
    return {"block_tokens": regions.block_tokens, "blocks": regions.blocks, "tokens": regions.tokens,
            "data": regions.encode()}


def load(db, answer_id: int) -> TokenRegions | None:
    """An answer's token regions from the log; None for answers logged without them (or an unreadable blob)."""
    if "token_regions" not in db.table_names():
        return None
    row = db.conn.execute("select data from token_regions where answer_id = ?", [answer_id]).fetchone()
    if row is None:
        return None
    try:
        return TokenRegions.decode(row[0])
    except ValueError:
        return None
