"""bench.make_long_data on a tiny corpus in tmp_path, with the default model's tokenizer (seconds).

Guards: window shapes and dtypes; held-out documents never reach a window; the answer mask covers exactly
the answer (and its closing <|im_end|>), which holds the needles' values; needles are in the window; the
build is deterministic for a seed; needles are tokenised as the app would tokenise the whole document;
training needles share no wording or key with the needle evaluation.
"""

from __future__ import annotations

import json
import lzma
import random
from pathlib import Path

import numpy as np
import pytest

from bench import long_tasks as T
from bench import make_long_data as M
from bench.make_indexer_data import held_out
from docreader.models import default_model_dir

MODEL_DIR = default_model_dir()  # resolved at import, before any fixture moves DOCREADER_HOME
pytestmark = pytest.mark.skipif(not (MODEL_DIR / "tokenizer.json").exists(),
                                reason=f"the default model is not installed in {MODEL_DIR}")
WORDS = "river stone lamp garden window letter morning winter harbour field candle road music paper".split()
MARKER = "Qwzxplor"  # only in held-out documents
LENGTHS, WINDOWS = (512, 1024), (10, 6)


def prose(rng: random.Random, sentences: int, tag: str) -> str:
    out = []
    for i in range(sentences):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        out.append(f"The {tag} {words}." + ("\n\n" if i % 7 == 6 else " "))
    return "".join(out).strip()


def named(prefix: str, held: bool, n: int) -> list[str]:
    """n document names on the given side of the evaluation split."""
    out, i = [], 0
    while len(out) < n:
        name = f"{prefix}-{i}"
        if held_out(name, M.HELD_OUT_MOD) == held:
            out.append(name)
        i += 1
    return out


def write_xz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def contract(name: str, text: str) -> dict:
    return {"name": name, "text": text, "questions": [{"question": "Who are the parties?", "answers": []}]}


def meeting(name: str, text: str) -> dict:
    turns = [{"speaker": f"S{i % 3}", "content": s} for i, s in enumerate(text.split(". "))]
    return {"name": name, "transcript": turns, "specific_queries": [{"query": "What was decided?"}]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Training books/contracts/meetings in plain words, plus held-out ones full of MARKER."""
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    for rel, make, prefix in (("books/train.jsonl.xz", lambda n, t: {"name": n, "text": t}, "Author/Book"),
                              ("cuad/train.jsonl.xz", contract, "contract"),
                              ("qmsum/train.jsonl.xz", meeting, "meeting")):
        rows = [make(n, prose(rng, rng.randint(40, 160), "plain")) for n in named(prefix, False, 5)]
        rows += [make(n, prose(rng, 200, MARKER)) for n in named(prefix, True, 2)]
        write_xz(root / rel, rows)
    return root


def build(data: Path, out: Path, seed: int = 0) -> Path:
    M.main(["--data", str(data), "--tokenizer", str(MODEL_DIR), "--lengths", ",".join(map(str, LENGTHS)),
            "--windows", ",".join(map(str, WINDOWS)), "--out", str(out), "--seed", str(seed)])
    return out


@pytest.fixture(scope="module")
def built(data, tmp_path_factory) -> Path:
    return build(data, tmp_path_factory.mktemp("long"))


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(MODEL_DIR))


def contains(ids: np.ndarray, part: list[int]) -> bool:
    return any(list(ids[i:i + len(part)]) == part for i in np.flatnonzero(ids == part[0]))


def test_shapes_dtypes_and_kinds(built):
    meta = json.loads((built / "meta.json").read_text())
    for L, n in zip(LENGTHS, WINDOWS):
        w = M.load_windows(built / f"windows_{L}.npz")
        assert w["tokens"].shape == (n, L) and w["tokens"].dtype == np.uint16
        assert w["answer"].shape == (n, L) and w["answer"].dtype == np.uint8
        assert w["kind"].shape == (n,) and w["kind"].dtype == np.uint8
        assert set(np.unique(w["kind"])) == {0, 1, 2}
        assert (w["kind"] == 2).sum() == round(n * 0.5) == meta["lengths"][str(L)]["kinds"]["synthetic"]
        assert not w["answer"][w["kind"] != 2].any()  # natural windows: plain LM data
        assert w["answer"][w["kind"] == 2].any(axis=1).all()


def test_held_out_documents_never_appear(built, tok):
    meta = json.loads((built / "meta.json").read_text())
    assert meta["documents_used"]["count"] > 0
    assert not any(held_out(n, 10) for n in meta["documents_used"]["names"])
    seen_plain = False
    for L in LENGTHS:
        for row in M.load_windows(built / f"windows_{L}.npz")["tokens"]:
            text = tok.decode(row)
            assert MARKER not in text
            seen_plain |= "The plain" in text
    assert seen_plain  # decoding works, so the absence of the marker means something


def test_answer_mask_is_the_answer_and_needles_are_in_the_window(built, tok):
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    for L in LENGTHS:
        w = M.load_windows(built / f"windows_{L}.npz")
        records = json.loads((built / f"tasks_{L}.json").read_text())
        assert sorted(r["row"] for r in records) == list(np.flatnonzero(w["kind"] == 2))
        for r in records:
            ids, mask = w["tokens"][r["row"]], w["answer"][r["row"]]
            n = int(mask.sum())
            assert mask[L - n:].all() and ids[-1] == eot  # the answer closes the window
            assert tok.decode(ids[L - n:]) == r["answer"] + "<|im_end|>"
            assert tok.decode(ids[:L - n]).endswith("<|im_start|>assistant\n")
            assert r["values"] and all(v in r["answer"] for v in r["values"])
            text = tok.decode(ids[:L - n])
            doc = text[text.index("<document>"):text.index("</document>")]
            for sentence in r["needles"]:
                assert " " + sentence in doc
                assert contains(ids, tok(" " + sentence, add_special_tokens=False)["input_ids"])  # as the app tokenises it
            if r["variant"] == "multivalue":  # listed in document order
                in_doc = sorted(r["needles"], key=doc.index)
                assert all(v in s for v, s in zip(r["values"], in_doc))


def test_multivalue_answer_lists_values_in_document_order():
    rng = random.Random(0)
    tasks = [t for t in (T.sample_task(rng) for _ in range(300)) if t.variant == "multivalue"]
    assert tasks
    for t in tasks:
        in_doc = [t.needles[i] for i in T.document_order(t.depths)]
        assert all(v in s for v, s in zip(t.values, in_doc)) and t.answer.startswith(t.values[0])


def test_deterministic_for_a_seed(data, built, tmp_path):
    again, other = build(data, tmp_path / "again"), build(data, tmp_path / "other", seed=1)
    for L in LENGTHS:
        a, b, c = (M.load_windows(d / f"windows_{L}.npz") for d in (built, again, other))
        for key in ("tokens", "answer", "kind"):
            assert np.array_equal(a[key], b[key])
        assert not np.array_equal(a["tokens"], c["tokens"])
        assert (built / f"tasks_{L}.json").read_text() == (again / f"tasks_{L}.json").read_text()


def test_hidden_needles_tokenise_like_the_whole_document(tok):
    """Pieces cut at sentence ends and needles tokenised alone give the ids of the joined text."""
    text = "Call me Mr. Ishmael. Some years ago\u2014never mind how long.\n\n\"Precisely,\" he said!  It was 1851? Yes."
    assert T.sentences(text)[:2] == ["Call me Mr. Ishmael.", " Some years ago\u2014never mind how long."]
    pieces = tok(T.sentences(text), add_special_tokens=False)["input_ids"]
    needles = [" Note: 4821 is the password of the quiet harbor.", " The KT-5081 code."]
    nid = tok(needles, add_special_tokens=False)["input_ids"]
    size = sum(map(len, pieces))
    ids, starts, order = T.hide(pieces, nid, [0.0, 1.0], size)
    first_end = len(tok(T.sentences(text)[0], add_special_tokens=False)["input_ids"])
    assert starts == [first_end, len(ids) - len(nid[1])] and order == [0, 1]
    joined = T.sentences(text)[0] + needles[0] + "".join(T.sentences(text)[1:]) + needles[1]
    assert ids == tok(joined, add_special_tokens=False)["input_ids"]
    cut, _, _ = T.hide(pieces, nid, [0.5, 0.5], size - 3)  # exactly `size` haystack tokens, cut at the front
    assert len(cut) == size - 3 + sum(map(len, nid))


def test_training_needles_do_not_reuse_the_evaluation_wording():
    from bench import eval_needle

    rng = random.Random(0)
    texts = []
    for _ in range(300):
        t = T.sample_task(rng)
        texts += t.needles + [t.question, t.answer]
    vocab = set(T.ADJECTIVES + T.NOUNS + T.VALUE_WORDS)
    assert not vocab & set(eval_needle.CITIES)
    lowered = " ".join(texts).lower()
    for phrase in ("pass key", "passkey", "magic number", "remember it", "answer with the number only"):
        assert phrase not in lowered
    assert not any(city in " ".join(texts) for city in eval_needle.CITIES)
    assert {T.sample_task(rng).variant for _ in range(200)} == set(T.VARIANTS)
