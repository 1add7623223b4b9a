"""Needle in a haystack: a passkey and a key-value needle hidden at a depth of public-domain book text.

One haystack per (length, depth): book text (held-out books first) cut so that the whole prompt is about
`length` tokens, with two needle sentences inserted together at a sentence boundary near `depth` of the
document. Two questions are asked about it (cache reused): the passkey and the value of the key. A
question counts as retrieved when the expected number appears in the answer; provenance counts as
finding the needle when a logged span overlaps that needle's sentence.
"""

from __future__ import annotations

import random
import re

from docreader.document import Document

from . import eval_metrics as M

CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Quito", "Tbilisi", "Accra", "Riga", "Manila",
          "Dakar", "Bogota", "Tunis", "Zagreb", "Kyoto", "Perth"]
PROMPT_OVERHEAD = 120  # template + question tokens around the document (measured: ~100 for SmolLM2)


def needles(rng: random.Random) -> list[dict]:
    passkey = str(rng.randint(10000, 99999))
    city, value = rng.choice(CITIES), str(rng.randint(10000, 99999))
    return [
        {"kind": "passkey", "sentence": f"The pass key is {passkey}. Remember it. {passkey} is the pass key.",
         "question": "What is the pass key? Answer with the number only.", "value": passkey},
        {"kind": "kv", "sentence": f"The special magic number for {city} is {value}.",
         "question": f"What is the special magic number for {city}? Answer with the number only.",
         "value": value},
    ]


def _boundary(text: str, pos: int) -> int:
    """The nearest sentence/paragraph boundary at or after pos (the text length at the end)."""
    if pos <= 0:
        return 0
    m = re.compile(r"(?<=[.!?])\s+|\n\s*\n").search(text, pos)
    return m.end() if m else len(text)


def haystack(book: str, tokenizer, doc_tokens: int, depth: float, rng: random.Random, name: str) -> tuple[Document, list[dict]]:
    """Book text of about `doc_tokens` tokens (needles included) with the needles at `depth` (0..1)."""
    ns = needles(rng)
    insert = " ".join(n["sentence"] for n in ns)
    need = max(64, doc_tokens - len(tokenizer(insert, add_special_tokens=False)["input_ids"]) - 2)
    # start at a paragraph after the book's title block, at a seeded offset, wrap if the book is short
    start = _boundary(book, rng.randint(0, max(0, len(book) - need * 6 - 1))) if len(book) > need * 6 else 0
    body = (book[start:] + "\n\n" + book)[: need * 8]
    enc = tokenizer(body, add_special_tokens=False, return_offsets_mapping=True)
    offs = enc["offset_mapping"]
    if len(offs) > need:
        body = body[: offs[need - 1][1]]
    body = body.strip()
    at = _boundary(body, int(depth * len(body))) if depth < 1 else len(body)
    before, after = body[:at].rstrip(), body[at:].lstrip()
    sep_b = " " if before else ""
    sep_a = " " if after else ""
    text = before + sep_b + insert + sep_a + after
    pos = len(before) + len(sep_b)
    for n in ns:
        n["range"] = (pos, pos + len(n["sentence"]))
        pos += len(n["sentence"]) + 1
    meta = {"kind": "book", "depth": depth, "needle_chars": [n["range"] for n in ns]}
    return Document(f"{name}.md", "md", text, [], meta), ns


def run(reader, books: list[dict], lengths: list[int], depths: list[float], max_new_tokens: int, seed: int,
        modes=("sparse", "dense"), log=print) -> list[dict]:
    """One record per (length, depth, needle kind, mode)."""
    from .eval_qa import ask_document

    lm = reader.lm
    out = []
    cell = 0
    for length in lengths:
        limit = lm.context_window - max_new_tokens - PROMPT_OVERHEAD
        doc_tokens = min(length, lm.context_window) - PROMPT_OVERHEAD - max_new_tokens
        if doc_tokens > limit:
            log(f"needle: length {length} exceeds the model's window, skipped")
            continue
        for depth in depths:
            rng = random.Random(f"{seed}-{length}-{depth}")
            book = books[cell % len(books)]
            cell += 1
            doc, ns = haystack(book["text"], lm.tokenizer, doc_tokens, depth, rng, f"needle-{length}-{int(depth * 100)}")
            log(f"needle L={length} depth={depth:.2f} book={book['name'][:40]!r}")
            recs = ask_document(reader, doc, [{"question": n["question"]} for n in ns], max_new_tokens, modes)
            for n, rec in zip(ns, recs):
                gold = [n["range"]]
                for mode, ans in rec["answers"].items():
                    kinds = ("dsa",) if mode == "sparse" else ("attn",)
                    r = {"length": length, "depth": depth, "needle": n["kind"], "mode": mode, "book": book["name"],
                         "answer": ans, "value": n["value"], "correct": M.contains_value(ans, n["value"]),
                         "cost": rec["cost"][mode], "needle_range": list(n["range"])}
                    for kind in kinds:
                        ranked = [tuple(s) for s in rec["spans"][kind]]
                        r[f"{kind}_rank"] = M.first_hit_rank(ranked, gold)
                        r[f"{kind}_in_spans"] = r[f"{kind}_rank"] is not None
                        r[f"{kind}_hit@3"] = M.hit_at_k(ranked, gold, 3)
                    out.append(r)
    return out


def summarize(records: list[dict]) -> dict:
    """accuracy and needle-in-spans per (length, depth, mode), and per (length, mode) over depths."""
    cells: dict = {}
    for r in records:
        for key in ((r["length"], r["depth"], r["mode"]), (r["length"], "all", r["mode"])):
            cells.setdefault(key, []).append(r)
    out = {}
    for (length, depth, mode), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2])):
        d = {"n": len(rs), "acc": M.mean(r["correct"] for r in rs),
             "acc_passkey": M.mean(r["correct"] for r in rs if r["needle"] == "passkey"),
             "acc_kv": M.mean(r["correct"] for r in rs if r["needle"] == "kv")}
        for kind in ("dsa", "attn"):
            if f"{kind}_in_spans" in rs[0]:
                d[f"{kind}_in_spans"] = M.mean(r[f"{kind}_in_spans"] for r in rs)
                d[f"{kind}_hit@3"] = M.mean(r[f"{kind}_hit@3"] for r in rs)
        out[f"{length}|{depth}|{mode}"] = d
    return out
