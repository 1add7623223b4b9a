"""Faithfulness of provenance, ContextCite's top-k log-probability drop.

For an answer the model gave, remove the top-k provenance spans from the document, re-score the same
answer tokens (log-probability given the ablated prompt), and compare the drop with removing k random
spans of the same lengths (not overlapping the top spans or each other). Provenance that the answer
really relied on should cost more log-probability than random text of equal size.
"""

from __future__ import annotations

import random

from docreader.document import Document

from . import eval_metrics as M


def ablate(text: str, ranges: list[tuple[int, int]]) -> str:
    """`text` without the given character ranges (merged first)."""
    out, pos = [], 0
    for a, b in M.merge_ranges(ranges):
        out.append(text[pos:a])
        pos = b
    out.append(text[pos:])
    return "".join(out)


def random_ranges(n_chars: int, lengths: list[int], avoid: list[tuple[int, int]], rng: random.Random,
                  tries: int = 200) -> list[tuple[int, int]]:
    """Ranges of the given lengths at random places, not overlapping `avoid` or each other (best effort:
    a length that finds no free place after `tries` draws is placed anywhere free of the others)."""
    chosen: list[tuple[int, int]] = []
    for ln in lengths:
        ln = max(1, min(ln, n_chars))
        pick = None
        for t in range(tries):
            s = rng.randint(0, max(0, n_chars - ln))
            r = (s, s + ln)
            blocked = chosen + (avoid if t < tries // 2 else [])
            if not any(M.overlaps(r, b) for b in blocked):
                pick = r
                break
        chosen.append(pick or (0, ln))
    return chosen


def drop_test(lm, doc: Document, question: str, answer: str, top: list[tuple[int, int]], k: int, n_random: int,
              seed: int, mode: str, base: float | None = None) -> dict | None:
    """log p(answer) with the full document (or `base`, when already scored), without the top-k spans, and
    without n_random random sets."""
    from .eval_attention import answer_ids, answer_logprob  # torch + transformers: only when scoring

    ids = answer_ids(lm, answer)
    top = [tuple(t) for t in top[:k]]
    if not ids or not top:
        return None
    rng = random.Random(seed)

    def score(text: str) -> float:
        return answer_logprob(lm, Document(doc.path, doc.format, text, [], doc.meta), question, ids, mode)

    base = score(doc.text) if base is None else base
    top_lp = score(ablate(doc.text, top))
    lengths = [b - a for a, b in top]
    rnd = [score(ablate(doc.text, random_ranges(len(doc.text), lengths, top, rng))) for _ in range(n_random)]
    return {"base": base, "top": top_lp, "random": rnd, "tokens": len(ids), "removed_chars": sum(lengths),
            "doc_chars": len(doc.text), "k": len(top), "mode": mode}
