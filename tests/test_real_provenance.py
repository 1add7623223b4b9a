"""The real default model in sparse mode, where DSA actually drops keys: the README demo on the sample
contract (10.7k tokens, YaRN), provenance that follows the question rather than the document's end, and
every format at ~2k tokens with a budget small enough that selection drops keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import corpus
from docreader.engine import Reader
from docreader.loaders import load

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "sample_docs" / "cuad_limeenergy_distributor_agreement.pdf"
BOOK = ROOT / "sample_docs" / "pride_and_prejudice.md"
SMALL = {"top_k": 128, "n_blocks": 4, "local_window": 64}  # ~2k tokens: most keys dropped


def dense_key_count(ans) -> int:
    """Keys every sparse layer would read with dense attention over the prompt (an upper bound)."""
    n_sparse = 29  # SmolLM2-135M: 30 layers, layer 0 dense
    P = ans.prompt_tokens
    return n_sparse * P * (P + 1) // 2


def clause(doc, words: str) -> tuple[int, int]:
    m = re.search(r"\W+".join(map(re.escape, words.split())), doc.text)
    assert m, words
    return m.start(), m.end()


@pytest.fixture(scope="module")
def reader(real_model_dir, tmp_path_factory):
    return Reader(db_path=tmp_path_factory.mktemp("log") / "docreader.db")


@pytest.fixture(scope="module")
def contract():
    return load(str(CONTRACT))


@pytest.fixture(scope="module")
def demo(reader, contract):
    return reader.ask(contract, "Which state's law governs this agreement?", max_new_tokens=16, log=False)


def test_demo_runs_sparse_and_drops_keys(demo, contract):
    prov = demo.provenance
    assert prov["attention"] == "sparse" and prov["adapter"]  # 10.7k tokens: the long-context delta's fixed RoPE
    assert prov["paths"].get("kernel", 0) + prov["paths"].get("torch", 0) > 0 and "dense" not in prov["paths"]
    assert 0 < demo.timings["keys_read"] < 0.25 * dense_key_count(demo)  # most keys were never read
    assert prov["indexer"]["trained"] and len(prov["indexer"]["sha256"]) == 64
    assert json.loads(json.dumps(demo.to_json()))["provenance"]["code"]["code_sha256"]


def test_demo_answer_passage_outranks_the_tail(demo, contract):
    """The old record counted the forced local window as a choice: the signature block (the document's last
    377 characters) ranked first and second for any question, the governing-law clause third. Now the clause
    (at 96% of the text) outranks every span from the document's last 2%."""
    n = len(contract.text)
    top = demo.spans[:3]
    assert len(top) == 3
    assert not all(s.char_start >= 0.98 * n for s in top), [(s.char_start, s.text[:40]) for s in top]
    law = clause(contract, "the laws of the State of Illinois")
    ranks = [s.rank for s in demo.spans if s.char_start < law[1] and law[0] < s.char_end]
    tail = [s.rank for s in demo.spans if s.char_start >= 0.98 * n]
    assert ranks and min(ranks) < min(tail, default=99), (ranks, tail)


@pytest.mark.xfail(strict=True, reason="the shipped indexer's picks favour the document's last ~10% whatever "
                   "the question (measured: bench/RESULTS-provenance.md); needs an indexer trained to read "
                   "long documents (whole-books issue)")
def test_mid_document_answer_outranks_the_tail(reader, contract):
    """A question about a clause in the middle of the contract (4.1 Duration, ~57% in) ranks that clause
    above every span from the document's last 2%."""
    ans = reader.ask(contract, "How long is the initial term of this agreement, and how is it renewed?",
                     max_new_tokens=16, log=False)
    assert ans.timings["cached_prefix_tokens"] > 0  # the demo's document prefix was reused
    n = len(contract.text)
    lo, _ = clause(contract, "4.1 Duration")
    _, hi = clause(contract, "4.2 Termination")
    ranks = [s.rank for s in ans.spans if s.char_start < hi and lo < s.char_end]
    tail = [s.rank for s in ans.spans if s.char_start >= 0.98 * n]
    assert ranks, [(s.rank, s.char_start, s.text[:40]) for s in ans.spans[:8]]
    assert min(ranks) < min(tail, default=len(ans.spans) + 1)


def test_follow_up_spans_are_its_own(reader, contract, demo):
    """A chat follow-up records only its own question and answer: the same question asked after an
    unrelated turn gets the spans it gets when asked first."""
    q = "Which state's law governs this agreement?"
    history = [("What products does the distributor sell?", "Energy efficiency products.")]
    again = reader.ask(contract, q, history=history, max_new_tokens=16, log=False)
    first = [(s.char_start, s.char_end) for s in demo.spans[:5]]
    follow = [(s.char_start, s.char_end) for s in again.spans[:5]]
    # the same passages (span edges move by a few characters with the prompt around them)
    shared = [f for f in follow if any(a < f[1] and f[0] < b for a, b in first)]
    assert len(shared) >= 3, (first, follow)


def _book_text(tokens: int = 2000) -> str:
    text = BOOK.read_text(encoding="utf-8")
    start = text.index("Chapter 1") if "Chapter 1" in text else 0
    return text[start : start + tokens * 4]


def _paragraphs(text: str) -> list[str]:
    return [p.strip().replace("\n", " ") for p in text.split("\n\n") if p.strip()]


def _make(kind: str, tmp: Path) -> Path:
    paras = _paragraphs(_book_text())
    if kind == "pdf":
        lines = [ln for p in paras for ln in re.findall(r".{1,90}(?:\s|$)", p)]
        return corpus.make_pdf(tmp / "book.pdf", ["\n".join(lines[i : i + 40]) for i in range(0, len(lines), 40)])
    if kind == "docx":
        return corpus.make_docx(tmp / "book.docx", blocks=[("h1", "Chapter 1")] + [("p", p) for p in paras])
    if kind == "epub":
        half = len(paras) // 2
        chapters = [(f"Chapter {i + 1}", f"<h1>Chapter {i + 1}</h1>" + "".join(f"<p>{p}</p>" for p in part))
                    for i, part in enumerate((paras[:half], paras[half:]))]
        return corpus.make_epub(tmp / "book.epub", chapters)
    if kind == "html":
        path = tmp / "book.html"
        path.write_text("<html><body><h1>Chapter 1</h1>" + "".join(f"<p>{p}</p>" for p in paras) + "</body></html>")
        return path
    if kind in ("txt", "md"):
        path = tmp / f"book.{kind}"
        path.write_text(("# Chapter 1\n\n" if kind == "md" else "") + "\n\n".join(paras), encoding="utf-8")
        return path
    if kind == "irc":
        lines = [f"[{10 + i // 60:02d}:{i % 60:02d}] <{('ann', 'bob', 'cy')[i % 3]}> {p}" for i, p in enumerate(paras)]
        path = tmp / "chat.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
    if kind == "json":
        path = tmp / "chat.json"
        path.write_text(json.dumps([{"author": ("ann", "bob")[i % 2], "time": f"10:{i % 60:02d}", "text": p}
                                    for i, p in enumerate(paras)]), encoding="utf-8")
        return path
    raise ValueError(kind)


@pytest.fixture(scope="module")
def small_reader(real_model_dir, tmp_path_factory):
    return Reader(overrides=SMALL, db_path=tmp_path_factory.mktemp("log") / "docreader.db")


@pytest.mark.parametrize("kind", ["pdf", "docx", "epub", "html", "txt", "md", "irc", "json"])
def test_each_format_sparse_at_2k_tokens(kind, small_reader, tmp_path):
    doc = load(str(_make(kind, tmp_path)))
    ans = small_reader.ask(doc, "Who is Mr. Bingley?", max_new_tokens=4, log=False)
    assert 1500 <= ans.document_tokens <= 3000, ans.document_tokens
    assert ans.provenance["attention"] == "sparse" and ans.provenance["dsa"]["top_k"] == 128
    assert 0 < ans.timings["keys_read"] < 0.5 * dense_key_count(ans)  # selection dropped keys
    assert ans.spans and all(s.location.get("label") for s in ans.spans)
    for s in ans.spans:  # spans quote the document in its own terms
        assert doc.text[s.char_start : s.char_end] == s.text
    field = {"pdf": "page", "epub": "section", "irc": "message", "json": "message"}.get(kind)
    if field:
        assert all(field in s.location for s in ans.spans), ans.spans[0].location
