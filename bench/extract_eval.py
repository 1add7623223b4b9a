"""Score `docreader extract --rows ROWS.jsonl` against CUAD's gold clauses (issue 21).

    python -m bench.extract_eval write-held-out ../shared/data/cuad/train.jsonl.xz DIR --n 8 --max-chars 12000
    docreader extract DIR --clauses governing-law,term,renewal,assignment,termination --rows rows.jsonl
    python -m bench.extract_eval score ../shared/data/cuad/train.jsonl.xz rows.jsonl [--held-out-only]

A document is matched to its CUAD row by file name (the `.txt` name or the `pdf` name). Per cell: the gold clause
is present or absent; the model said "not stated" (absent) or answered; a verified quote "hits" when, folded to
letters and digits, it lies inside a gold passage or covers at least half of one; a short answer of a few words
(not yes/no) is "in gold" when it lies inside a gold passage. Held out: bench.eval_data.held_out.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from bench.eval_data import _open, held_out
from docreader.extract import catalogue


def _fold(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", text.lower())


def hits(quote: str | None, gold: list[str]) -> bool:
    q = _fold(quote or "")
    if len(q) < 8:
        return False
    return any(q in g or (g and g in q) or (len(g) > 0 and _overlap(q, g) >= 0.5) for g in map(_fold, gold))


def _overlap(q: str, g: str) -> float:
    """The longest common substring of the folded texts, as a share of the shorter (cheap: 8-char shingles)."""
    grams = {g[i:i + 8] for i in range(max(1, len(g) - 7))}
    shared = sum(q[i:i + 8] in grams for i in range(max(1, len(q) - 7)))
    return shared / max(1, min(len(q), len(g)) - 7)


def answer_in(answer: str | None, gold: list[str]) -> bool:
    """A short answer (at most 6 words, not yes/no) found, folded, inside a gold passage: "Delaware." in "...the
    laws of the State of Delaware..."."""
    a = _fold(answer or "")
    words = (answer or "").split()
    if len(a) < 3 or len(words) > 6 or words[0].strip(",.").lower() in ("yes", "no"):
        return False
    return any(a in _fold(g) for g in gold)


def cuad_rows(path: str) -> dict[str, dict]:
    out = {}
    with _open(Path(path)) as f:
        for line in f:
            row = json.loads(line)
            out[row["name"]] = row
            if row.get("pdf"):
                out[row["pdf"]] = row
    return out


def write_held_out(cuad: str, folder: str, n: int, max_chars: int) -> list[str]:
    """The n shortest held-out contracts of at least 2,000 characters and at most max_chars, as .txt files."""
    rows = {r["name"]: r for r in cuad_rows(cuad).values()}
    pick = sorted((r for r in rows.values() if held_out(r["name"]) and 2000 <= len(r["text"]) <= max_chars),
                  key=lambda r: len(r["text"]))[:n]
    Path(folder).mkdir(parents=True, exist_ok=True)
    for r in pick:
        name = r["name"] if r["name"].endswith(".txt") else r["name"] + ".txt"
        (Path(folder) / name).write_text(r["text"], encoding="utf-8")
    return [r["name"] for r in pick]


def score(cuad: str, rows_path: str, held_out_only: bool) -> dict:
    gold_rows = cuad_rows(cuad)
    by_question = {c.question: c for c in catalogue()[0].values()}
    cells = defaultdict(lambda: defaultdict(int))
    for line in open(rows_path, encoding="utf-8"):
        r = json.loads(line)
        clause = by_question.get(r.get("question"))
        g = gold_rows.get(Path(r["document"]).name)
        if clause is None or g is None or r.get("error") or (held_out_only and not held_out(g["name"])):
            continue
        gold = [a["text"] for q in g["questions"] if q["category"] == clause.category for a in q.get("answers") or []]
        for key in (clause.key, "all"):
            c = cells[key]
            if gold:
                c["present"] += 1
                c["said_absent"] += bool(r["absent"])
                c["quote_verified"] += bool(r.get("quote"))
                c["quote_on_gold"] += hits(r.get("quote"), gold)
                c["answer_in_gold"] += answer_in(r.get("short_answer"), gold)
            else:
                c["absent"] += 1
                c["absent_ok"] += bool(r["absent"])
    return {k: dict(v) for k, v in cells.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write-held-out")
    w.add_argument("cuad")
    w.add_argument("folder")
    w.add_argument("--n", type=int, default=8)
    w.add_argument("--max-chars", type=int, default=12000)
    s = sub.add_parser("score")
    s.add_argument("cuad")
    s.add_argument("rows")
    s.add_argument("--held-out-only", action="store_true")
    a = ap.parse_args()
    if a.cmd == "write-held-out":
        print("\n".join(write_held_out(a.cuad, a.folder, a.n, a.max_chars)))
    else:
        print(json.dumps(score(a.cuad, a.rows, a.held_out_only), indent=1))


if __name__ == "__main__":
    main()
