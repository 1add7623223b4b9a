"""bench.eval_long (issue 16's long-context evaluation) on the CPU: scoring and bucketing helpers, held-out-only
books, exact shared prompt prefixes, no L x L (or L x vocab) tensor on the needle and NLL paths, and an
end-to-end run (adapter + base, every part) on a tiny random Llama with the default model's tokenizer."""

from __future__ import annotations

import json
import lzma
import math
import random
import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dsa
from bench import eval_long as E
from bench.eval_data import held_out
from docreader import models
from docreader.generate import Generation
from dsa.longctx import yarn
from dsa.lora import LoraConfig, add_lora, save_adapter

MARK = "Zqxtrainsplit"  # a word only the training-split book holds
WORDS = ("river", "lantern", "quiet", "harbour", "stone", "letter", "winter", "garden", "captain", "window",
         "morning", "silver", "road", "village", "candle", "promise", "orchard", "bridge", "shadow", "music")


def _name(prefix: str, want_held_out: bool) -> str:
    return next(f"{prefix}-{i}.md" for i in range(10_000) if held_out(f"{prefix}-{i}.md") == want_held_out)


def _prose(rng: random.Random, chars: int, extra: str = "") -> str:
    out, n = [], 0
    while n < chars:
        s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        s = (s[0].upper() + s[1:] + (f" {extra}" if extra else "") + ".")
        out.append(s)
        n += len(s) + 1
        if rng.random() < 0.1:
            out.append("\n\n")
    return " ".join(out)


@pytest.fixture(scope="module")
def books_file(tmp_path_factory):
    """Three held-out books and one training-split book (marked) in a .jsonl.xz."""
    rng = random.Random(0)
    rows = [{"name": _name(f"held{i}", True), "text": f"# Title: Held {i}\n\n" + _prose(rng, 40_000)} for i in range(3)]
    rows.insert(1, {"name": _name("train", False), "text": "# Title: Train\n\n" + _prose(rng, 40_000, MARK)})
    path = tmp_path_factory.mktemp("books") / "books.jsonl.xz"
    with lzma.open(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path, rows


@pytest.fixture(scope="module")
def tok_dir():
    d = models.default_model_dir()
    if not (d / "tokenizer.json").exists():
        pytest.skip("the default model is not installed (its tokenizer is needed)")
    return d


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)


def small_dsa() -> dsa.DSAConfig:
    return dsa.DSAConfig(index_heads=2, index_dim=16, rope_dim=8, block_size=16, n_blocks=4, top_k=64,
                         sink_tokens=4, local_window=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer):
    """A tiny random Llama with the default model's tokenizer (model dir), a random LoRA delta with a fixed YaRN
    RoPE (adapter dir, holding its indexer too) and a random indexer for the base (indexer dir)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    dsa.attach(model, small_dsa())
    dsa.save_indexer(model, root / "indexer")
    dsa.detach(model)
    lcfg = LoraConfig(rank=2, alpha=2.0, rope=yarn(model.config, 8.0), max_positions=2048)
    add_lora(model, lcfg)
    for m in model.modules():
        if hasattr(m, "lora_B"):
            m.lora_B.data.normal_(0, 0.05)
    save_adapter(model, root / "adapter", lcfg)
    for f in ("indexer.safetensors", "dsa_config.json"):
        (root / "adapter" / f).write_bytes((root / "indexer" / f).read_bytes())
    return root


# -- helpers -------------------------------------------------------------------------------------------


def test_correct_needs_the_whole_number():
    assert E.correct("The pass key is 48213.", "48213")
    assert E.correct("48213", "48213")
    assert not E.correct("The pass key is 482134.", "48213")
    assert not E.correct("4821", "48213")
    assert not E.correct("", "48213")


def test_bucket_edges_cut_at_the_window():
    assert E.bucket_edges(2048) == [0, 2047]
    assert E.bucket_edges(262144) == [0, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262143]
    assert E.bucket_edges(131072) == [0, 2048, 4096, 8192, 16384, 32768, 65536, 131071]
    assert E.bucket_edges(5000) == [0, 2048, 4096, 4999]
    assert E.bucket_label(2048, 4096) == "[2k,4k)" and E.bucket_label(0, 2048) == "[0,2k)"


def test_pool_buckets_weighs_by_tokens():
    w1 = {"edges": [0, 2048, 4096, 4999], "nll": [2.0, 3.0, 4.0]}
    w2 = {"edges": [0, 2048, 4095], "nll": [4.0, 1.0]}
    got = {b["bucket"]: b for b in E.pool_buckets([w1, w2])}
    assert list(got) == ["[0,2k)", "[2k,4k)", "[4k,8k)"]
    assert got["[0,2k)"]["nll"] == pytest.approx(3.0) and got["[0,2k)"]["n"] == 4096
    assert got["[2k,4k)"]["nll"] == pytest.approx((3.0 * 2048 + 1.0 * 2047) / 4095) and got["[2k,4k)"]["n"] == 4095
    assert got["[4k,8k)"]["nll"] == pytest.approx(4.0) and got["[4k,8k)"]["n"] == 903


def test_needle_summary_counts_per_cell():
    items = [{"part": "needle", "model": "a", "length": 16, "depth": d, "status": "done",
              "answers": [{"correct": c1}, {"correct": c2}]} for d, c1, c2 in ((0.0, True, False), (1.0, True, True))]
    items.append({"part": "needle", "model": "a", "length": 16, "depth": 0.5, "status": "skipped"})
    s = E.needle_summary(items)["a"]
    assert s["16|0.0"]["correct"] == 1 and s["16|1.0"]["acc"] == 1.0
    assert s["16|all"] == {"n": 4, "correct": 3, "acc": 0.75}
    assert "16|0.5" not in s


# -- held-out books only -------------------------------------------------------------------------------


def test_only_held_out_books_are_read(books_file):
    path, rows = books_file
    books = E.held_out_books([path])
    names = [b["name"] for b in books]
    assert len(names) == 3 and all(held_out(n) for n in names)
    assert not any(MARK in b["text"] for b in books)
    with pytest.raises(ValueError):
        E.Corpus([r for r in rows if not held_out(r["name"])])


def test_corpus_never_yields_training_text(books_file, tokenizer):
    corpus = E.Corpus(E.held_out_books([books_file[0]]))
    for seed in range(20):
        text, names = corpus.text(random.Random(seed), 100_000)  # longer than one book: several joined
        assert MARK not in text and len(names) >= 3 and len(text) >= 100_000
    ids, _ = corpus.tokens(tokenizer, random.Random(1), 3000)
    assert len(ids) == 3000 and MARK.lower() not in tokenizer.decode(ids).lower()


def test_extract_books_writes_held_out_only(books_file, tmp_path):
    out = tmp_path / "held.jsonl.xz"
    assert E.main(["--books", str(books_file[0]), "--extract-books", str(out)]) == 0
    rows = [json.loads(line) for line in lzma.open(out, "rt")]
    assert len(rows) == 3 and all(held_out(r["name"]) for r in rows)
    assert E.main(["--books", str(books_file[0]), "--extract-books", str(out), "--max-books", "2"]) == 0
    assert [json.loads(line)["name"] for line in lzma.open(out, "rt")] == [r["name"] for r in rows[:2]]


# -- prompts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_needle_case_shares_an_exact_prefix(books_file, tokenizer, depth):
    corpus = E.Corpus(E.held_out_books([books_file[0]]))
    case = E.needle_case(tokenizer, corpus, 2048, depth, seed=0, max_new=16)
    P = 2048 - E.PREFIX_ROOM
    assert len(case["prefix"]) == P
    for ids in case["prompts"]:
        assert ids[:P] == case["prefix"] and len(ids) + 16 <= 2048
    doc = tokenizer.decode(case["prefix"])
    for n in case["needles"]:
        assert n["sentence"] in doc
    t0, t1 = case["needle_tokens"]
    d0 = case["doc_start"]
    assert d0 + case["doc_tokens"] < P
    needles = tokenizer.decode(case["prefix"][d0 + t0:d0 + t1])
    assert all(n["sentence"] in needles for n in case["needles"])
    where = doc.index(case["needles"][0]["sentence"]) / len(doc)
    assert abs(where - depth) < 0.1
    assert MARK not in doc


# -- the model paths -------------------------------------------------------------------------------------


def _loaded(tiny, adapter: bool):
    from dsa.train import load_model
    model = load_model(str(tiny / "model"))
    E.prepare(model, str(tiny / "adapter") if adapter else None, tiny / ("adapter" if adapter else "indexer"))
    return model


class LargestDims(TorchDispatchMode):
    """Records every op output shape with two dimensions >= limit (an L x L or L x vocab tensor)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.big = limit, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and sum(d >= self.limit for d in t.shape) >= 2:
                self.big.append((str(func), tuple(t.shape)))
        return out


def test_needle_and_nll_build_no_quadratic_tensor(tiny, books_file, tokenizer):
    model = _loaded(tiny, adapter=True)
    corpus = E.Corpus(E.held_out_books([books_file[0]]))
    L = 2048
    case = E.needle_case(tokenizer, corpus, L, 0.5, seed=0, max_new=4)
    with LargestDims(L // 2) as probe:
        r = E.run_needle(model, tokenizer, case, L, 4)
    assert r["prefix_tokens"] == L - E.PREFIX_ROOM and probe.big == []
    ids, _ = corpus.tokens(tokenizer, random.Random(0), 10_000)  # > position_nll's 4,096-token chunks
    with LargestDims(5000) as probe:
        r = E.window_nll(model, ids)
    assert probe.big == [] and len(r["nll"]) == 4 and all(math.isfinite(v) for v in r["nll"])


def test_answers_are_scored_against_their_own_needle(tiny, books_file, tokenizer, monkeypatch):
    """A perfect reader (reads the needle out of the prompt it is given) scores 2/2: each question reaches
    the model with its own needle's document and is scored against that needle's value."""
    model = _loaded(tiny, adapter=False)

    def reader(model_, tok, input_ids, max_new_tokens=16, cache=None, **kw):
        assert cache.get_seq_length() == len(input_ids) - 1  # the shared prefix and the question are cached
        text = tok.decode(input_ids)
        q = text.rsplit("Question:", 1)[1]
        m = re.search(r"for (\w+)\?", q)
        pat = rf"magic number for {m.group(1)} is (\d+)" if m else r"pass key is (\d+)"
        ans = f"It is {re.search(pat, text).group(1)}."
        return Generation(ans, [1, 2], len(input_ids), 0.0, 0.0, "eos")

    monkeypatch.setattr(E, "generate", reader)
    corpus = E.Corpus(E.held_out_books([books_file[0]]))
    case = E.needle_case(tokenizer, corpus, 1024, 0.25, seed=3, max_new=16)
    r = E.run_needle(model, tokenizer, case, 1024, 16)
    assert [a["needle"] for a in r["answers"]] == ["passkey", "kv"]
    assert all(a["correct"] for a in r["answers"])
    swapped = dict(case, needles=case["needles"][::-1])  # answers read from one needle, scored against the other
    assert not any(a["correct"] for a in E.run_needle(model, tokenizer, swapped, 1024, 16)["answers"])


def test_end_to_end_adapter_and_base(tiny, books_file, tmp_path, capsys):
    out = tmp_path / "long.json"
    argv = ["--model", str(tiny / "model"), "--adapter", str(tiny / "adapter"), "--base-indexer", str(tiny / "indexer"),
            "--books", str(books_file[0]), "--device", "cpu", "--lengths", "512,1024", "--depths", "0,1",
            "--max-new-tokens", "4", "--recall-lengths", "1024", "--recall-queries", "16", "--ppl-length", "1024",
            "--short-length", "256", "--short-windows", "2", "--compare-base", "--base-needle-lengths", "512",
            "--out", str(out)]
    assert E.main(argv) == 0
    res = json.loads(out.read_text())
    items = res["items"]
    assert [it["status"] for it in items] == ["done"] * len(items)
    parts = [(it["part"], it["model"]) for it in items]
    assert parts == ([("needle", "adapted")] * 4 + [("recall", "adapted")] + [("ppl_short", "adapted"), ("ppl_short", "base")] * 2
                     + [("ppl", "adapted"), ("ppl", "base")] + [("needle", "base")] * 2)  # most important first
    assert res["models"]["adapted"]["fixed_window"] == 2048 and res["models"]["base"]["fixed_window"] is None
    needle = [it for it in items if it["part"] == "needle"]
    assert {a["needle"] for it in needle for a in it["answers"]} == {"passkey", "kv"}
    assert all(it["prefix_tokens"] == it["length"] - E.PREFIX_ROOM for it in needle)
    assert [it["rope_factor"] for it in needle if it["model"] == "base"] == [2.0, 2.0]  # YaRN per length
    train = _name("train", False)
    assert train not in res["books"] and not any(train in it.get("books", []) for it in items)
    s = res["summary"]
    assert s["needle"]["adapted"]["1024|all"]["n"] == 4 and s["needle"]["base"]["512|all"]["n"] == 4
    rec = s["recall"]["adapted"]["1024"]
    assert rec["trained"]["n"] == 16 and len(rec["per_layer"]) == 1 and 0 < rec["trained"]["mean"] <= 1.0 + 1e-6
    assert rec["oracle"]["mean"] >= rec["trained"]["mean"] - 1e-6  # the oracle is the ceiling at the same budget
    assert [b["bucket"] for b in s["ppl"]["adapted"]["buckets"]] == ["[0,2k)"]
    assert s["ppl"]["base"]["short"]["n_windows"] == 2
    md = capsys.readouterr().out
    assert "| 1,024 |" in md and "Δppl" in md and "windows of 256" in md
    assert out.with_suffix(".md").read_text().strip() == md.strip()


def test_time_budget_skips_and_still_writes(tiny, books_file, tmp_path):
    out = tmp_path / "skip.json"
    argv = ["--model", str(tiny / "model"), "--books", str(books_file[0]), "--device", "cpu", "--lengths", "512",
            "--depths", "0", "--parts", "needle,ppl", "--ppl-length", "512", "--short-windows", "1",
            "--time-budget", "0", "--out", str(out)]
    assert E.main(argv) == 0
    items = json.loads(out.read_text())["items"]
    assert len(items) == 3 and all(it["status"] == "skipped" and "time budget" in it["reason"] for it in items)
