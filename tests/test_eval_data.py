"""bench/eval_data.py and bench/eval_needle.py on hand-made rows (no model loaded)."""

import json
import lzma
import random

from bench import eval_data as D
from bench import eval_needle as N


class ToyTokenizer:
    """One token per whitespace-separated word, with character offsets (the HF call shape used)."""

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        import re
        spans = [m.span() for m in re.finditer(r"\S+", text)]
        out = {"input_ids": list(range(len(spans)))}
        if return_offsets_mapping:
            out["offset_mapping"] = spans
        return out


CONTRACT = {"name": "toy.txt", "text": "Governing law: Delaware.\nTerm: five years.\n" + "x " * 50,
            "questions": [
                {"category": "Governing Law", "question": "Which law?",
                 "answers": [{"text": "Delaware", "start": 15, "end": 23, "parts": [[15, 23]]}]},
                {"category": "Late", "question": "Late clause?",
                 "answers": [{"text": "x", "start": 100, "end": 101}]},
                {"category": "Audit", "question": "Audit rights?", "answers": []}]}

MEETING = {"name": "m1.json", "transcript": [{"speaker": "A", "content": "hello"},
                                             {"speaker": "B", "content": "the remote is yellow"},
                                             {"speaker": "C", "content": "agreed"}],
           "specific_queries": [{"query": "What colour?", "answer": "Yellow.", "relevant_text_span": [["1", "2"]]},
                                {"query": "Bad", "answer": "", "relevant_text_span": [["1", "9"]]}]}


def test_row_kinds_and_reading_jsonl_xz(tmp_path):
    f = tmp_path / "mixed.jsonl.xz"
    with lzma.open(f, "wt") as fh:
        for row in (CONTRACT, MEETING, {"name": "b/book.md", "text": "Call me Ishmael."}):
            fh.write(json.dumps(row) + "\n")
        fh.write("not json\n")
    rows = D.read_all([f], {"contract", "meeting", "book"})
    assert [r["name"] for r in rows.contracts] == ["toy.txt"]
    assert [r["name"] for r in rows.meetings] == ["m1.json"]
    assert [r["name"] for r in rows.books] == ["b/book.md"]
    assert D.data_files([tmp_path]) == [f]


def test_contract_questions_cut_keeps_only_gold_inside():
    doc, kept = D.contract_document(CONTRACT, max_chars=60)
    assert kept <= 60 and doc.text == CONTRACT["text"][:kept]
    qs = D.contract_questions(CONTRACT, kept, None, None)
    assert [q["category"] for q in qs] == ["Governing Law", "Audit"]  # "Late" lies beyond the cut
    assert qs[0]["gold"] == [(15, 23)] and doc.text[15:23] == "Delaware"
    assert qs[1]["gold"] == []
    assert [q["category"] for q in D.contract_questions(CONTRACT, kept, 1, 0)] == ["Governing Law"]  # 0 means none


def test_meeting_gold_turns_map_to_message_regions():
    doc = D.meeting_document(MEETING)
    qs = D.meeting_queries(MEETING, doc, None)
    assert len(qs) == 1  # the query with turn 9 (not in the transcript) is dropped
    (start, end), = qs[0]["gold"]
    assert doc.text[start:end].startswith("B: the remote is yellow")
    assert doc.text[start:end].endswith("C: agreed")
    assert len(D.message_regions(doc)) == 3


def test_pick_prefers_held_out_and_is_order_independent():
    rows = [{"name": f"doc{i}"} for i in range(40)]
    a = D.pick(rows, 5, lambda r: 1, 0, 2)
    b = D.pick(list(reversed(rows)), 5, lambda r: 1, 0, 2)
    assert a == b
    assert all(D.held_out(r["name"]) for r in a[: sum(D.held_out(r["name"]) for r in rows)])
    assert D.pick(rows, None, lambda r: 1, 2, 3) == []  # nothing in the size range


def test_haystack_places_needles_at_depth():
    book = " ".join(f"Sentence number {i} is here." for i in range(400))
    tok = ToyTokenizer()
    for depth in (0.0, 0.5, 1.0):
        doc, ns = N.haystack(book, tok, 300, depth, random.Random(1), "h")
        assert len(tok(doc.text)["input_ids"]) <= 300
        for n in ns:
            a, b = n["range"]
            assert doc.text[a:b] == n["sentence"]
            assert n["value"] in n["sentence"]
        pos = ns[0]["range"][0] / len(doc.text)
        assert abs(pos - depth) < 0.1
