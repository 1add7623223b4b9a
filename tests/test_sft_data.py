"""bench.sft_tasks and bench.make_sft_data on a tiny corpus in tmp_path, with the default model's tokenizer.

Guards: every reply parses back (docreader.quotes) into its answer and quotes, and every quote verifies
against its document at the gold evidence; absent clauses answer "not stated"; bAbI facts sit in the
haystack in story order; windows have their bucket's length, the answer mask covers exactly the replies
(each with its <|im_end|>), the lm mask is off; held-out documents and bAbI evaluation stories never reach
a window.
"""

from __future__ import annotations

import io
import json
import lzma
import random
import tarfile

import numpy as np
import pytest

from bench import eval_data as D
from bench import make_sft_data as M
from bench import sft_tasks as S
from docreader.models import default_model_dir
from docreader.quotes import parse, verify

MODEL_DIR = default_model_dir()
pytestmark = pytest.mark.skipif(not (MODEL_DIR / "tokenizer.json").exists(),
                                reason=f"the default model is not installed in {MODEL_DIR}")
MARKER = "Qwzxplor"  # only in held-out documents


def _names(prefix: str, held: bool, n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        name = f"{prefix}-{i}"
        if D.held_out(name) == held:
            out.append(name)
        i += 1
    return out


def _prose(rng: random.Random, n: int, tag: str = "") -> str:
    words = "river stone lamp garden window letter morning winter harbour field candle road".split()
    return " ".join(f"The {tag}{' '.join(rng.choice(words) for _ in range(8))}." for _ in range(n))


def _contract(name: str, rng: random.Random, tag: str) -> dict:
    law = "This Agreement shall be governed by the laws of the State of Illinois."
    text = _prose(rng, 40, tag) + "\n" + law + "\n" + _prose(rng, 40, tag)
    s = text.index(law)
    return {"name": name, "text": text, "questions": [
        {"category": "Governing Law", "question": "x", "answers": [{"text": law, "start": s, "end": s + len(law)}]},
        {"category": "Non-Compete", "question": "x", "answers": []}]}


def _babi(task: int) -> str:
    lines = []
    for story in range(12):
        lines += [f"1 Mary went to the kitchen{story}.", f"2 John moved to the hallway{story}.",
                  f"3 Where is Mary?\tkitchen{story}\t1"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    rows = {"books": [{"name": n, "text": _prose(rng, 400, MARKER if h else "")} for h in (0, 1)
                      for n in _names("book", bool(h), 3)],
            "contracts": [_contract(n, rng, MARKER if h else "") for h in (0, 1) for n in _names("contract", bool(h), 4)],
            "meetings": []}
    for kind, rel in M.FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with lzma.open(root / rel, "wt") as f:
            for r in rows[kind]:
                f.write(json.dumps(r) + "\n")
    (root / "babi").mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for t, name in ((1, "qa1_single-supporting-fact_train.txt"), (2, "qa2_two-supporting-facts_train.txt")):
            data = _babi(t).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (root / "babi" / "en-10k-train.tar.xz").write_bytes(lzma.compress(buf.getvalue()))
    (root / "irc").mkdir()
    return root, rows


def test_replies_parse_back_and_quotes_verify_at_the_gold(corpus):
    _, rows = corpus
    rng = random.Random(1)
    exs = S.contract_examples(rows["contracts"][0], rng, None, None)
    assert {e.absent for e in exs} == {True, False}
    for e in exs:
        p = parse(e.reply)
        if e.absent:
            assert p.absent and not p.quotes and e.reply == f"Answer: {S.ABSENT}"
            continue
        assert p.answer == "The laws of Illinois." and not p.absent
        for q in p.quotes:
            v = verify(q, e.document)
            assert v.verified and any(v.char_start < b and a < v.char_end for a, b in e.gold)


def test_babilong_facts_in_order_and_split(corpus):
    root, rows = corpus
    train = S.load_babi(root / "babi" / "en-10k-train.tar.xz", 1, "train")
    held = S.load_babi(root / "babi" / "en-10k-train.tar.xz", 1, "eval")
    assert {s.index for s in held} == {0, 10} and not {s.index for s in train} & {0, 10}
    books = [r["text"] for r in rows["books"]]
    ex = S.babilong_example(train[0], books, 6000, random.Random(2), "babi-test")
    text = ex.document.text
    spots = [text.index(f) for f in train[0].facts]
    assert spots == sorted(spots) and 5500 < len(text) < 6500
    assert [text[a:b] for a, b in ex.gold] == [train[0].facts[i] for i in train[0].support]
    p = parse(ex.reply)
    assert p.answer == f"The {train[0].answer}." and all(verify(q, ex.document).verified for q in p.quotes)


def test_windows(corpus, tmp_path):
    from transformers import AutoTokenizer

    root, _ = corpus
    M.main(["--data", str(root), "--tokenizer", str(MODEL_DIR), "--buckets", "1024,2048", "--tokens", "2e4,2e4",
            "--out", str(tmp_path)])
    tok = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    start = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert not any(D.held_out(n) for n in meta["documents_used"] if not n.startswith(("babi-", "needle-")))
    for L in (1024, 2048):
        z = np.load(tmp_path / f"windows_{L}.npz")
        toks, ans = z["tokens"].astype(int), z["answer"].astype(bool)
        assert toks.shape[1] == L and len(toks) >= 5 and not z["lm"].any()
        for row, mask in zip(toks, ans):
            text = tok.decode(row)
            assert MARKER not in text  # no held-out document
            assert "kitchen0" not in text and "kitchen10" not in text  # no bAbI evaluation story
            # every supervised run is one reply: it starts right after "<|im_start|>assistant\n", ends with <|im_end|>
            edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(int), 0]))
            assert len(edges) >= 2
            for a, b in zip(edges[::2], edges[1::2]):
                assert list(row[a - len(start):a]) == start and row[b - 1] == eot
                assert parse(tok.decode(row[a:b - 1])).answer


def test_contract_bundle_asks_only_what_the_bundle_answers_unambiguously(corpus):
    _, rows = corpus
    rng = random.Random(3)
    train = [r for r in rows["contracts"] if not D.held_out(r["name"])][:3]
    clause = "The Distributor shall not sell competing products in Ohio for two years."
    unique = dict(train[1], text=train[1]["text"] + "\n" + clause)
    s = unique["text"].index(clause)
    unique["questions"] = [q if q["category"] != "Non-Compete" else
                           {"category": "Non-Compete", "question": "x",
                            "answers": [{"text": clause, "start": s, "end": s + len(clause)}]}
                           for q in train[1]["questions"]]
    bundle = [train[0], unique, train[2]]
    exs = S.contract_bundle_examples(bundle, rng)
    text = exs[0].document.text
    assert all(r["text"] in text for r in bundle) and exs[0].document.meta["members"] == [r["name"] for r in bundle]
    # Governing Law is in every member (ambiguous): never asked; Non-Compete only in one: asked, quoted from it
    assert {e.meta["category"] for e in exs} == {"Non-Compete"}
    (e,) = exs
    assert not e.absent and [text[a:b] for a, b in e.gold] == [clause]
    for q in parse(e.reply).quotes:
        v = verify(q, e.document)
        assert v.verified and any(v.char_start < b and a < v.char_end for a, b in e.gold)
    # a clause no contract must have, present in two members: ambiguous too, never asked
    twice = dict(unique, name=train[2]["name"])
    assert not [x for x in S.contract_bundle_examples([unique, twice], rng) if not x.absent]
    # nothing unique and nothing present: the clause absent from every member answers ABSENT
    plain = S.contract_bundle_examples([train[0], train[2]], rng)
    assert [(x.meta["category"], x.absent, x.reply) for x in plain] == [("Non-Compete", True, f"Answer: {S.ABSENT}")]


def test_bundled_windows_keep_held_out_contracts_out(corpus, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    root, _ = corpus
    monkeypatch.setattr(M, "BUNDLE_FROM", 1024)
    M.main(["--data", str(root), "--tokenizer", str(MODEL_DIR), "--buckets", "4096", "--tokens", "4e4",
            "--bundle", "1", "--shares", "contract=1", "--out", str(tmp_path)])
    meta = json.loads((tmp_path / "meta.json").read_text())
    used = meta["documents_used"]
    assert used and not any(D.held_out(n) for n in used) and not any("+" in n for n in used)
    tok = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    z = np.load(tmp_path / "windows_4096.npz")
    docs = [tok.decode(row[:np.flatnonzero(ans)[0]]) for row, ans in zip(z["tokens"].astype(int), z["answer"])]
    assert not any(MARKER in t for t in docs)
    assert all(t.count("governed by the laws of the State of Illinois") >= 2 for t in docs)  # every one a bundle
