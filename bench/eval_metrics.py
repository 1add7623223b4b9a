"""Metrics of the answer/provenance evaluation, pure functions on hand-checkable inputs.

Spans are character ranges `(start, end)` (end exclusive) into one document's text; a ranked list of
spans is best first. Gold evidence is a list of character ranges too (CUAD clause parts, QMSum turns
rendered as message regions, a needle's sentence).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from typing import Iterable, Sequence

from docreader.quotes import says_absent  # noqa: F401  (one heuristic, shared with the answers' parser)

Range = tuple[int, int]


def overlaps(a: Range, b: Range) -> bool:
    """True when [a0, a1) and [b0, b1) share at least one character."""
    return max(a[0], b[0]) < min(a[1], b[1])


def overlap_chars(a: Range, b: Range) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def first_hit_rank(ranked: Sequence[Range], gold: Sequence[Range]) -> int | None:
    """1-based rank of the first span overlapping any gold range (None: no span does)."""
    for i, s in enumerate(ranked):
        if any(overlaps(s, g) for g in gold):
            return i + 1
    return None


def hit_at_k(ranked: Sequence[Range], gold: Sequence[Range], k: int) -> bool:
    r = first_hit_rank(ranked, gold)
    return r is not None and r <= k


def mrr(ranked: Sequence[Range], gold: Sequence[Range]) -> float:
    r = first_hit_rank(ranked, gold)
    return 0.0 if r is None else 1.0 / r


def gold_coverage(ranked: Sequence[Range], gold: Sequence[Range], k: int) -> float:
    """Share of the gold characters covered by the union of the top-k spans."""
    total = sum(max(0, g[1] - g[0]) for g in merge_ranges(gold))
    if total == 0:
        return 0.0
    top = merge_ranges(ranked[:k])
    return sum(overlap_chars(s, g) for s in top for g in merge_ranges(gold)) / total


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    out: list[list[int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


# --- answer text -------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+")
_ARTICLES = {"a", "an", "the"}


def normalize_tokens(text: str) -> list[str]:
    """SQuAD-style: lower case, alphanumeric runs, articles dropped."""
    return [t for t in _WORD.findall(text.lower()) if t not in _ARTICLES]


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 (SQuAD); 1.0 when both are empty, 0.0 when only one is."""
    p, r = normalize_tokens(prediction), normalize_tokens(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def best_f1(prediction: str, references: Sequence[str]) -> float:
    return max((token_f1(prediction, r) for r in references), default=0.0)


def absent_scores(pairs: Sequence[tuple[bool, bool]]) -> dict:
    """pairs of (gold_absent, predicted_absent) -> accuracy on absent / present, precision, F1 of 'absent'."""
    tp = sum(1 for g, p in pairs if g and p)
    fp = sum(1 for g, p in pairs if not g and p)
    fn = sum(1 for g, p in pairs if g and not p)
    n_abs = sum(1 for g, _ in pairs if g)
    n_pres = len(pairs) - n_abs
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / n_abs if n_abs else 0.0
    return {"absent_n": n_abs, "present_n": n_pres,
            "absent_recall": rec if n_abs else None,  # said "absent" when the clause is absent
            "false_absent_rate": fp / n_pres if n_pres else None,  # said "absent" when it is there
            "absent_precision": prec if tp + fp else None,
            "absent_f1": (2 * prec * rec / (prec + rec)) if prec + rec else 0.0}


def contains_value(answer: str, value: str) -> bool:
    """Needle accuracy: the expected value (digits or word) appears in the answer as a whole token."""
    return re.search(r"(?<![0-9A-Za-z])" + re.escape(value) + r"(?![0-9A-Za-z])", answer or "") is not None


# --- faithfulness (ContextCite-style top-k log-probability drop) -------------------------------------

def drop_summary(rows: Sequence[dict]) -> dict:
    """rows: {"base": logp, "top": logp without top spans, "random": [logp without random spans, ...]}.

    drop = base - ablated (nats over the answer; larger = the removed text mattered more). Returns the
    mean drops, their per-token versions when `tokens` is given, and how often removing the top spans
    hurt more than the mean random removal (a faithful provenance wins well above 0.5)."""
    if not rows:
        return {"n": 0}
    top = [r["base"] - r["top"] for r in rows]
    rnd = [r["base"] - statistics.fmean(r["random"]) for r in rows]
    wins = sum(1 for t, q in zip(top, rnd) if t > q)
    ties = sum(1 for t, q in zip(top, rnd) if t == q)
    out = {"n": len(rows), "top_drop_mean": statistics.fmean(top), "random_drop_mean": statistics.fmean(rnd),
           "top_drop_median": statistics.median(top), "random_drop_median": statistics.median(rnd),
           "top_beats_random": (wins + 0.5 * ties) / len(rows)}
    toks = [r.get("tokens") for r in rows]
    if all(toks):
        out["top_drop_per_token"] = statistics.fmean(t / n for t, n in zip(top, toks))
        out["random_drop_per_token"] = statistics.fmean(q / n for q, n in zip(rnd, toks))
    return out


def mean(xs: Iterable[float | bool | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None
