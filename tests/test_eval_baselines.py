"""bench/eval_retrieval.py and bench/eval_faith.py helpers on toy texts (no model loaded)."""

import random

import numpy as np

from bench import eval_faith as F
from bench import eval_metrics as M
from bench import eval_retrieval as R

TOY = ("The supplier shall deliver the goods to the warehouse every Monday. "
       "Payment is due within thirty days of the invoice date. "
       "This agreement is governed by the laws of the State of Delaware. "
       "Either party may terminate this agreement with ninety days written notice. ")


def test_fixed_windows_cover_words_in_order():
    wins = R.fixed_windows(TOY, size=10)
    assert [w.text for w in wins][0].startswith("The supplier")
    n_words = len(R.words(TOY))
    assert len(wins) == -(-n_words // 10)
    assert all(TOY[w.start : w.end] == w.text for w in wins)
    assert all(a.end <= b.start for a, b in zip(wins, wins[1:]))  # non-overlapping, in order
    assert len(R.fixed_windows(TOY, size=10, stride=5)) > len(wins)
    assert R.fixed_windows("", size=10) == []


def test_fixed_windows_respect_bounds():
    text = "alice: hello there\nbob: the sound is broken again\ncarol: fixed it"
    bounds = [(0, 18), (19, 49), (50, len(text))]
    wins = R.fixed_windows(text, size=100, bounds=bounds)
    assert [(w.start, w.end) for w in wins] == [(0, 18), (19, 49), (50, len(text))]
    wins = R.fixed_windows(text, size=2, bounds=bounds)
    assert all(any(lo <= w.start and w.end <= hi for lo, hi in bounds) for w in wins)


def test_bm25_finds_the_governing_law_window():
    wins = R.fixed_windows(TOY, size=11)
    ranked = R.rank_bm25("Which state's law governs this agreement?", wins)
    gold = (TOY.index("This agreement is governed"), TOY.index("Delaware") + len("Delaware"))
    assert M.hit_at_k(ranked, [gold], 1)
    ranked = R.rank_bm25("When is payment due after the invoice?", wins)
    assert M.hit_at_k(ranked, [(TOY.index("Payment"), TOY.index("date.") + 4)], 1)


def test_bm25_tokens_drop_stopwords():
    assert R.bm25_tokens("What is THE notice period?") == ["notice", "period"]


def test_random_baseline_is_seeded_permutation():
    wins = R.fixed_windows(TOY, size=5)
    a, b = R.rank_random(wins, 3), R.rank_random(wins, 3)
    assert a == b and sorted(a) == sorted((w.start, w.end) for w in wins)


def test_embedder_rank_orders_by_cosine():
    emb = object.__new__(R.Embedder)
    emb._cache = {}
    vecs = {"apples": [1.0, 0.0], "pears": [0.0, 1.0], "fruit apples": [0.9, 0.1]}
    emb.encode = lambda texts: np.array([np.array(vecs[t]) / np.linalg.norm(vecs[t]) for t in texts])
    wins = [R.Window(0, 6, "apples"), R.Window(7, 12, "pears")]
    assert emb.rank("fruit apples", wins) == [(0, 6), (7, 12)]


def test_ablate_removes_ranges():
    assert F.ablate("0123456789", [(2, 4), (3, 5), (8, 10)]) == "01567"
    assert F.ablate("abc", []) == "abc"


def test_random_ranges_same_lengths_and_avoid_top():
    rng = random.Random(0)
    top = [(100, 150), (400, 420)]
    rs = F.random_ranges(1000, [50, 20], top, rng)
    assert [b - a for a, b in rs] == [50, 20]
    assert not any(M.overlaps(r, t) for r in rs for t in top)
    assert not M.overlaps(rs[0], rs[1])
    assert all(0 <= a and b <= 1000 for a, b in rs)


def test_dense_attention_probe_rows_and_causal_mask():
    import torch

    from bench.eval_attention import DenseAttentionProbe

    g = torch.Generator().manual_seed(0)
    H, Hkv, L, D = 4, 2, 6, 8
    q = torch.randn(1, H, L, D, generator=g)
    k = torch.randn(1, Hkv, L, D, generator=g)
    probe = DenseAttentionProbe(record_from=4)
    probe(0, None, q, k)  # layer 0 is skipped
    assert probe.rows == 0
    probe(1, None, q, k)  # prefill: rows 4 and 5 only
    assert probe.rows == 2
    kk = k[0].repeat_interleave(H // Hkv, 0)
    expect = torch.zeros(L, dtype=torch.float64)
    for pos in (4, 5):
        s = torch.einsum("hd,hkd->hk", q[0, :, pos], kk[:, : pos + 1]) * D**-0.5
        expect[: pos + 1] += torch.softmax(s, -1).sum(0).double() / H
    assert torch.allclose(probe.weights[:L], expect, atol=1e-6)
    assert float(probe.weights[:L].sum()) == pytest_approx(2.0)  # each row's softmax sums to 1
    # decode step: one query at the last position, keys include the cache
    before = probe.weights[:L].clone()
    probe(1, None, q[:, :, -1:], k)
    assert probe.rows == 3
    assert float((probe.weights[:L] - before).sum()) == pytest_approx(1.0)


def pytest_approx(x):
    import pytest

    return pytest.approx(x, abs=1e-6)
