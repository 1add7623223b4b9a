"""bench/eval_grounded.py scoring and tables on hand-made replies (no model loaded, except the one
`integration` smoke run at the end)."""

import json
import types
from pathlib import Path

import pytest

from bench import eval_grounded as G
from docreader import quotes as Q
from docreader.document import Document

TOY = ("The supplier shall deliver the goods to the warehouse every Monday. "
       "Payment is due within thirty days of the invoice date. "
       "This agreement is governed by the laws of the State of Delaware. "
       "Either party may terminate this agreement with ninety days written notice. ")
DOC = Document("toy.txt", "txt", TOY)
LAW = "This agreement is governed by the laws of the State of Delaware."
GOLD = [(TOY.index(LAW), TOY.index(LAW) + len(LAW))]


def reply(*quotes, answer):
    return "".join(f'Quote: "{q}"\n' for q in quotes) + f"Answer: {answer}"


def test_verified_quote_overlapping_gold_counts():
    g = G.grade_text(reply(LAW, answer="Delaware."), DOC, GOLD)
    assert g["answer"].startswith("Delaware") and not g["absent_said"]
    assert [q["verified"] for q in g["quotes"]] == [True]
    assert g["quotes"][0]["in_gold"] == pytest.approx(1.0)
    assert g["quote_hit"] is True and g["quote_hit_strict"] is True


def test_quote_elsewhere_or_mostly_outside_gold():
    payment = "Payment is due within thirty days of the invoice date."
    g = G.grade_text(reply(payment, answer="Delaware."), DOC, GOLD)
    assert g["quotes"][0]["verified"] and g["quote_hit"] is False and g["quote_hit_strict"] is False
    # verified, touches the gold clause, but most of its characters lie before it
    straddle = payment + " This agreement"
    g = G.grade_text(reply(straddle, answer="Delaware."), DOC, GOLD)
    assert g["quotes"][0]["verified"] and 0 < g["quotes"][0]["in_gold"] < 0.5
    assert g["quote_hit"] is True and g["quote_hit_strict"] is False


def test_unverified_quote_does_not_count():
    made_up = "The governing law shall be that of the Republic of Texas, without exception."
    g = G.grade_text(reply(made_up, answer="Texas."), DOC, GOLD)
    assert [q["verified"] for q in g["quotes"]] == [False]
    assert g["quote_hit"] is False and g["quote_hit_strict"] is False
    s = G.quote_stats([g, G.grade_text(reply(LAW, LAW, answer="Delaware."), DOC, GOLD)])
    assert s["quotes"] == 3 and s["quotes_verified"] == pytest.approx(2 / 3) and s["with_quote"] == 1.0


def test_unverified_quote_located_in_gold_does_not_count(monkeypatch):
    """A near-miss that the verifier places on the gold clause but does not accept is no hit."""
    start, end = GOLD[0]
    near = types.SimpleNamespace(text=LAW.replace("Delaware", "Texas"), verified=False, char_start=start,
                                 char_end=end, score=0.8, location={})
    monkeypatch.setattr(Q, "verify_all", lambda quotes, document: [near for _ in quotes])
    g = G.grade_text(reply(near.text, answer="Texas."), DOC, GOLD)
    assert g["quote_hit"] is False and g["quote_hit_strict"] is False and g["quotes"][0]["in_gold"] == 0.0


def test_absent_detection():
    g = G.grade_text("Answer: The document does not say.", DOC, [])
    assert g["absent_said"] is True and g["quotes"] == []
    assert g["quote_hit"] is None  # no gold: neither hit nor miss
    assert G.grade_text(reply(LAW, answer="Delaware."), DOC, []).get("absent_said") is False


def test_in_gold_share():
    assert G.in_gold_share(0, 10, [(5, 20)]) == pytest.approx(0.5)
    assert G.in_gold_share(0, 10, [(0, 4), (2, 6), (8, 30)]) == pytest.approx(0.8)  # gold merged, not double counted
    assert G.in_gold_share(5, 5, [(0, 10)]) == 0.0


def test_babilong_accuracy():
    assert G.babi_correct("Mary is in the Bathroom.", ["bathroom"])
    assert G.babi_correct("kitchen", ["garden", "kitchen"])
    assert not G.babi_correct("Mary went to the bathrooms.", ["bathroom"])
    assert not G.babi_correct("The document does not say.", ["hallway"])


def _row(verified_hit, absent_said, n_quotes=1, n_verified=1, dsa=False, correct=None, f1=None, strict=None):
    qs = [{"verified": i < n_verified, "in_gold": 1.0} for i in range(n_quotes)]
    r = {"answer": "x", "absent_said": absent_said, "quotes": qs, "quote_hit": verified_hit,
         "quote_hit_strict": verified_hit if strict is None else strict, "dsa_hit@3": dsa,
         "cost": {"wall_s": 1.0, "prefill_s": 0.5, "decode_s": 0.5, "new_tokens": 10}}
    if correct is not None:
        r["correct"] = correct
    if f1 is not None:
        r["f1"] = f1
    return r


def _rec(rows: dict, gold=True, cell=None, bm25=None):
    r = {"gold": [[0, 5]] if gold else [], "absent": not gold, "meta": {"cell": cell} if cell else {}, "by_model": rows}
    if bm25 is not None:
        r["baselines"] = {"bm25": {"hit@3": bm25}}
    return r


def test_contract_summary():
    recs = [_rec({"m": _row(True, False, dsa=True, strict=False)}, bm25=True),
            _rec({"m": _row(False, True, n_quotes=2, n_verified=1)}, bm25=False),
            _rec({"m": _row(None, True, n_quotes=0)}, gold=False, bm25=True),  # absent: no provenance score
            _rec({"m": _row(None, True, n_quotes=0)}, gold=False),
            _rec({"m": _row(None, False, n_quotes=3, n_verified=0)}, gold=False),
            _rec({"m": {"skipped": "too long"}})]
    s = G.summarize("contracts", recs, "m")
    assert (s["asked"], s["skipped"], s["n_present"], s["n_absent"]) == (5, 1, 2, 3)
    assert s["quote_hit"] == pytest.approx(0.5) and s["quote_hit_strict"] == 0.0
    assert s["absent_said_absent"] == pytest.approx(2 / 3)
    assert s["absent_said_present"] == pytest.approx(0.5)
    assert s["quotes"] == 6 and s["quotes_verified"] == pytest.approx(2 / 6)
    assert s["dsa_hit3"] == pytest.approx(0.5) and s["bm25_hit3"] == pytest.approx(0.5)
    assert s["wall_s"] == pytest.approx(5.0) and s["new_tokens"] == 50


def test_babilong_and_meeting_summaries():
    recs = [_rec({"m": _row(True, False, correct=True)}, cell="qa1|4096"),
            _rec({"m": _row(False, False, correct=False)}, cell="qa1|4096"),
            _rec({"m": _row(False, False, correct=True)}, cell="qa2|4096"),
            _rec({"m": {"skipped": "window"}}, cell="qa1|32768")]
    cells = G.summarize("babilong", recs, "m")["cells"]
    assert list(cells) == ["qa1|4096", "qa1|32768", "qa2|4096"]
    assert cells["qa1|4096"]["acc"] == pytest.approx(0.5) and cells["qa1|4096"]["quote_hit"] == pytest.approx(0.5)
    assert cells["qa2|4096"]["acc"] == 1.0
    assert cells["qa1|32768"]["acc"] is None and cells["qa1|32768"]["skipped"] == 1
    s = G.summarize("meetings", [_rec({"m": _row(True, False, f1=0.2)}), _rec({"m": _row(True, False, f1=0.6)})], "m")
    assert s["f1"] == pytest.approx(0.4)


def _result():
    base = {"quote_hit": 0.2, "absent_said_absent": 0.1, "absent_said_present": 0.0, "quotes_verified": None,
            "asked": 3, "skipped": 0, "wall_s": 9.0}
    tuned = {"quote_hit": 0.7, "absent_said_absent": 0.9, "absent_said_present": 0.3, "quotes_verified": 1.0,
             "asked": 3, "skipped": 0, "wall_s": 8.0}
    babi = {"b": {"cells": {"qa1|32768": {"acc": 0.5, "asked": 2, "skipped": 0}}, "wall_s": 3.0},
            "t": {"cells": {"qa1|32768": {"acc": 1.0, "asked": 2, "skipped": 0}}, "wall_s": 3.0}}
    part = lambda s: {"summary": s, "items": 3, "docs": 1, "wall_s": 60.0, "budget_skipped": 0, "records": []}
    return {"settings": {"date": "2026-12-03", "mode": "quick", "models": ["b", "t"], "command": "python -m x",
                         "describe": "toy", "wall_s": 120.0},
            "parts": {"contracts": part({"b": base, "t": tuned}),
                      "meetings": part({"b": {"f1": 0.1}, "t": {"f1": 0.2}}), "babilong": part(babi)}}


def test_tables_side_by_side_with_targets():
    text = G.render(_result())
    line = lambda label: next(x for x in text.splitlines() if label in x)
    assert "| metric | target | b | t |" in text
    assert line("overlaps gold clause") == ("| verified quote overlaps gold clause (answerable) | >= 0.60 | 0.200 ✗ "
                                            "| 0.700 ✓ |")
    assert line("clause is there").endswith("| 0.000 ✓ | 0.300 ✗ |")  # <= target
    assert line("quotes that verify (all") .endswith("| – | 1.000 ✓ |")
    assert line("qa1 @ 32,768 tokens: accuracy") == "| qa1 @ 32,768 tokens: accuracy | >= 0.90 | 0.500 ✗ | 1.000 ✓ |"
    assert "F1 ratio t / b: 2.00 (target ≥ 1.5: met)" in text


def test_report_round_trip(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_result()))
    assert G.main(["--report", str(path)]) == 0
    assert capsys.readouterr().out.strip() == G.render(_result()).strip()


def test_make_eval_chains_grounded(monkeypatch, tmp_path, capsys):
    from bench import evaluate as E

    seen = []

    def run(a):
        seen.append(a)
        return _result() | {"json": a.out}

    monkeypatch.setattr(G, "run", run)
    assert E.main(["--only", "grounded", "--full", "--no-embed", "--seed", "3", "--out", str(tmp_path / "e.json")]) == 0
    [a] = seen
    assert a.full and a.no_embed and a.seed == 3 and a.out == str(tmp_path / "e-grounded.json") and a.contracts == 12
    assert "#### contracts" in capsys.readouterr().out
    assert "grounded" in E.parse_args([]).only.split(",")  # part of the quick `make eval`


def test_presets_and_overrides():
    q, f = G.parse_args([]), G.parse_args(["--full", "--max-new-tokens", "7", "--babi-n", "3"])
    assert q.time_budget is None and q.babi_lengths == "4096" and q.contracts == 2
    assert (f.contracts, f.present, f.absent, f.meetings, f.queries) == (12, 4, 3, 8, 3)
    assert f.babi_n == 3 and f.contract_tokens == f.meeting_tokens == f.babi_tokens == 7
    assert f.argv == ["--full", "--max-new-tokens", "7", "--babi-n", "3"]
    assert G.parse_args(["--only", "babilong,contracts"]).only == "babilong,contracts"
    with pytest.raises(SystemExit):
        G.parse_args(["--only", "contracts,needle"])


def test_babi_cells():
    assert G.babi_cells(G.parse_args(["--full"])) == [(1, 32768), (1, 131072), (2, 32768)]
    assert G.babi_cells(G.parse_args(["--full", "--babi-tasks", "3"])) == [(3, 32768), (3, 131072)]
    assert G.babi_cells(G.parse_args(["--babi-tasks", "1,2", "--babi-lengths", "4096,8192"])) == [
        (1, 4096), (1, 8192), (2, 4096), (2, 8192)]
    assert G.babi_cells(G.parse_args(["--babi-cells", "qa2@2048"])) == [(2, 2048)]


class FakeReader:
    """Reader.ask's shape: replies quote the toy document; a question containing 'long' is refused."""

    def __init__(self, text):
        self.text, self._prefix, self.asked = text, None, []

    def ask(self, document, question, **kw):
        from docreader.errors import DocreaderError

        self.asked.append(question)
        if "long" in question:
            raise DocreaderError("exceeds the window")
        self._prefix = ("key", "cache")
        start = document.text.index(LAW)
        span = types.SimpleNamespace(char_start=start, char_end=start + 10)
        parsed = Q.parse("Answer: The document does not say." if "audit" in question else self.text)
        return types.SimpleNamespace(text=self.text, answer_text=parsed.answer, absent=parsed.absent,
                                     quotes=Q.verify_all(parsed.quotes, document), spans=[span], prompt_tokens=100,
                                     new_tokens=5, timings={"prefill_s": 0.1, "decode_s": 0.2, "cached_prefix_tokens": 0})


def test_run_groups_asks_every_model_and_honours_the_deadline():
    ex = lambda q: types.SimpleNamespace(kind="contract", name="toy", document=DOC, question=q, answers=["Delaware"],
                                         gold=GOLD, absent=False, history=[], meta={"category": "law"})
    readers = {"base": FakeReader("Delaware, I think."), "tuned": FakeReader(reply(LAW, answer="Delaware."))}
    absent = types.SimpleNamespace(**vars(ex("Any audit rights?")) | {"gold": [], "absent": True, "answers": []})
    groups = [G._ready([ex("Which law?"), ex("A long one?"), absent])]
    recs = []
    assert G.run_groups("contracts", groups, readers, 8, None, None, recs, lambda: None) == 0
    assert [r["question"] for r in recs] == ["Which law?", "A long one?", "Any audit rights?"]
    assert readers["tuned"].asked == ["Which law?", "A long one?", "Any audit rights?"]
    assert readers["tuned"]._prefix is None
    assert recs[2]["by_model"]["tuned"]["absent_said"] is True and recs[0]["by_model"]["tuned"]["absent_said"] is False
    tuned, base = recs[0]["by_model"]["tuned"], recs[0]["by_model"]["base"]
    assert tuned["quote_hit"] is True and tuned["dsa_hit@3"] is True and base["quote_hit"] is False
    assert "skipped" in recs[1]["by_model"]["tuned"]
    s = G.summarize("contracts", recs, "tuned")
    assert (s["asked"], s["skipped"], s["quote_hit"], s["absent_said_absent"]) == (2, 1, 1.0, 1.0)
    late = []
    assert G.run_groups("contracts", groups * 2, readers, 8, 0.0, None, late, lambda: None) == 6
    assert late == []


DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.mark.integration
@pytest.mark.skipif(not (DATA / "cuad").is_dir(), reason="no ../shared/data")
def test_smoke_one_contract_question(model_home, tmp_path, capsys):
    """Both default models answer one held-out contract question through Reader.ask (6 new tokens)."""
    out = tmp_path / "g.json"
    assert G.main(["--only", "contracts", "--data", str(DATA / "cuad"), "--contracts", "1", "--present", "1",
                   "--absent", "0", "--no-embed", "--max-new-tokens", "6", "--contract-chars", "1000,4000",
                   "--out", str(out)]) == 0
    c = json.loads(out.read_text())["parts"]["contracts"]
    assert c["items"] == 1 and set(c["summary"]) == {"smollm2-135m-instruct-base", "smollm2-135m-instruct"}
    for v in c["records"][0]["by_model"].values():
        assert v["text"] and v["quote_hit"] in (True, False) and v["cost"]["new_tokens"] <= 6
    assert "#### contracts" in capsys.readouterr().out
