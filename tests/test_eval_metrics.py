"""bench/eval_metrics.py on hand-made cases: span overlap, hit@k, token-F1, absent detection, drops."""

import pytest

from bench import eval_metrics as M


def test_overlap_is_half_open():
    assert M.overlaps((0, 5), (4, 10))
    assert not M.overlaps((0, 5), (5, 10))  # touching is not overlapping
    assert not M.overlaps((7, 9), (0, 5))
    assert M.overlaps((2, 3), (0, 10))  # contained
    assert M.overlap_chars((0, 5), (3, 10)) == 2
    assert M.overlap_chars((0, 5), (6, 10)) == 0


def test_hit_at_k_and_mrr():
    gold = [(100, 200), (500, 520)]
    ranked = [(0, 10), (300, 400), (510, 515), (150, 160)]
    assert M.first_hit_rank(ranked, gold) == 3
    assert not M.hit_at_k(ranked, gold, 1)
    assert not M.hit_at_k(ranked, gold, 2)
    assert M.hit_at_k(ranked, gold, 3)
    assert M.mrr(ranked, gold) == pytest.approx(1 / 3)
    assert M.first_hit_rank([], gold) is None
    assert M.mrr([(0, 1)], gold) == 0.0


def test_gold_coverage_counts_union_once():
    gold = [(0, 10), (5, 20)]  # merged: 20 chars
    ranked = [(0, 5), (0, 5), (15, 30)]  # union inside gold: 0-5 and 15-20 = 10 chars
    assert M.gold_coverage(ranked, gold, 3) == pytest.approx(0.5)
    assert M.gold_coverage(ranked, gold, 1) == pytest.approx(0.25)
    assert M.merge_ranges([(5, 8), (0, 3), (2, 4), (8, 9)]) == [(0, 4), (5, 9)]


def test_token_f1_squad_style():
    assert M.token_f1("The State of New York", "state of new york") == pytest.approx(1.0)
    # prediction 4 tokens (new york law governs), reference 2 (new york): P = 2/4, R = 1, F1 = 2/3
    assert M.token_f1("New York law governs", "New York") == pytest.approx(2 / 3)
    assert M.token_f1("Delaware", "New York") == 0.0
    assert M.token_f1("", "") == 1.0
    assert M.token_f1("", "x") == 0.0
    assert M.token_f1("a an the", "x") == 0.0  # only articles -> empty
    assert M.best_f1("New York", ["Delaware", "new york"]) == pytest.approx(1.0)
    assert M.best_f1("x", []) == 0.0


@pytest.mark.parametrize("text", [
    "The document does not say.",
    "The contract doesn't mention a non-compete clause.",
    "There is no such provision in the agreement.",
    "This is not specified in the document.",
    "None.",
    "I could not find any information about that.",
    "The agreement does not contain an audit right.",
])
def test_says_absent_positive(text):
    assert M.says_absent(text)


@pytest.mark.parametrize("text", [
    "The agreement is governed by the laws of the State of New York.",
    "The term is five years, renewable unless notice is given.",
    "The licensee shall not assign the agreement without consent.",  # 'not' but a real clause
    "",
])
def test_says_absent_negative(text):
    assert not M.says_absent(text)


def test_absent_scores():
    # (gold_absent, said_absent): 2 absent (1 caught), 3 present (1 wrongly called absent)
    pairs = [(True, True), (True, False), (False, True), (False, False), (False, False)]
    s = M.absent_scores(pairs)
    assert s["absent_n"] == 2 and s["present_n"] == 3
    assert s["absent_recall"] == pytest.approx(0.5)
    assert s["false_absent_rate"] == pytest.approx(1 / 3)
    assert s["absent_precision"] == pytest.approx(0.5)
    assert s["absent_f1"] == pytest.approx(0.5)
    assert M.absent_scores([(False, False)])["absent_recall"] is None


def test_contains_value_whole_token():
    assert M.contains_value("The pass key is 71432.", "71432")
    assert not M.contains_value("The pass key is 714320.", "71432")
    assert not M.contains_value("The pass key is 7143.", "71432")
    assert not M.contains_value("", "1")


def test_drop_summary_contextcite_style():
    rows = [
        {"base": -5.0, "top": -9.0, "random": [-5.5, -6.5], "tokens": 4},  # top drop 4, random drop 1
        {"base": -2.0, "top": -2.0, "random": [-3.0, -3.0], "tokens": 2},  # top drop 0, random drop 1
    ]
    s = M.drop_summary(rows)
    assert s["n"] == 2
    assert s["top_drop_mean"] == pytest.approx(2.0)
    assert s["random_drop_mean"] == pytest.approx(1.0)
    assert s["top_beats_random"] == pytest.approx(0.5)
    assert s["top_drop_per_token"] == pytest.approx((1.0 + 0.0) / 2)
    assert s["random_drop_per_token"] == pytest.approx((0.25 + 0.5) / 2)
    assert M.drop_summary([]) == {"n": 0}


def test_mean_skips_none():
    assert M.mean([True, False, None, 1.0]) == pytest.approx(2 / 3)
    assert M.mean([None]) is None
