"""Does provenance follow the question or the document's end? Real contract PDFs with CUAD's gold clauses.

    python -m bench.eval_tail [PDF_DIR] [--data CUAD_JSONL] [--questions 3] [--weightings choice,attention]

For each PDF (default ../shared/data/cuad/pdf) with its CUAD row, loaded through docreader's PDF loader,
up to `--questions` answerable clause questions are asked as a person would ask them (CUAD's "Details:"
sentence, not its annotation prompt) through `Reader.ask` in sparse mode. Per question and provenance kind
(each span weighting, and BM25 windows as the baseline in the same run):
- tail share: the fraction of the top-3 spans that start in the last 2% of the document;
- hit@1 / hit@3: a top-1 / top-3 span overlaps the gold clause (located in the PDF's text by its words).
Prints a markdown table and writes the per-question records as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import lzma
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import eval_metrics as M  # noqa: E402
from bench.eval_retrieval import fixed_windows, rank_bm25  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cuad"


def natural_question(cuad_question: str) -> str:
    """CUAD's annotation prompt ends in 'Details: <a plain question>'; that plain question is what we ask."""
    m = re.search(r"Details:\s*(.+)$", cuad_question.strip(), re.S)
    return (m.group(1) if m else cuad_question).strip()


def locate(text: str, clause: str, min_words: int = 6) -> tuple[int, int] | None:
    """[start, end) of `clause` in `text`, matching its words with any whitespace/punctuation between them
    (PDF extraction re-flows lines and hyphenates); falls back to the clause's first 12 words."""
    words = re.findall(r"\w+", clause)
    for n in (len(words), 12):
        if len(words) < min_words or n > len(words):
            continue
        pat = r"\W+".join(re.escape(w) for w in words[:n])
        m = re.search(pat, text, re.I)
        if m:
            end = m.end() if n == len(words) else min(len(text), m.start() + len(clause))
            return m.start(), end
    return None


def tail_share(spans: list[tuple[int, int]], n_chars: int, k: int = 3, tail: float = 0.02) -> float | None:
    top = spans[:k]
    return sum(s >= (1 - tail) * n_chars for s, _ in top) / len(top) if top else None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pdf_dir", nargs="?", default=str(DATA / "pdf"))
    ap.add_argument("--data", default=str(DATA / "train.jsonl.xz"), help="CUAD rows with a 'pdf' field")
    ap.add_argument("--questions", type=int, default=3, help="answerable questions per contract")
    ap.add_argument("--weightings", default="choice,attention",
                    help="span weightings to compare ('legacy' = the Reader's own, for code without the option)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    from docreader.engine import Reader
    from docreader.errors import DocreaderError
    from docreader.loaders import load

    rows = {}
    with lzma.open(a.data, "rt") as f:
        for line in f:
            r = json.loads(line)
            if r.get("pdf"):
                rows[r["pdf"]] = r
    reader = Reader(disk_cache=False)
    kinds = a.weightings.split(",")
    recs = []
    for pdf in sorted(Path(a.pdf_dir).glob("*.pdf")):
        row = rows.get(pdf.name)
        if row is None:
            print(f"skip {pdf.name}: no CUAD row", file=sys.stderr)
            continue
        try:
            doc = load(str(pdf))
        except DocreaderError as e:
            print(f"skip {pdf.name}: {e}", file=sys.stderr)
            continue
        qs = []
        for q in row["questions"]:
            golds = [g for g in (locate(doc.text, ans["text"]) for ans in q.get("answers") or []) if g]
            if golds:
                qs.append((natural_question(q["question"]), golds, q.get("category", "")))
        step = max(1, len(qs) // max(1, a.questions))
        qs = qs[::step][: a.questions]
        wins = fixed_windows(doc.text, 64)
        for question, golds, cat in qs:
            rec = {"pdf": pdf.name, "category": cat, "question": question, "gold": golds, "chars": len(doc.text),
                   "spans": {"bm25": [list(r) for r in rank_bm25(question, wins)[:20]]}}
            for kind in kinds:
                if kind != "legacy":
                    reader.weighting = kind
                t0 = time.perf_counter()
                try:
                    ans = reader.ask(doc, question, max_new_tokens=a.max_new_tokens, log=False)
                except DocreaderError as e:
                    print(f"skip {pdf.name}: {e}", file=sys.stderr)
                    break
                rec["spans"][kind] = [[s.char_start, s.char_end] for s in ans.spans]
                rec.setdefault("answer", ans.text)
                rec["tokens"] = ans.document_tokens
                print(f"[{time.strftime('%H:%M:%S')}] {pdf.name[:40]:40s} {cat[:20]:20s} {kind:9s} "
                      f"{time.perf_counter() - t0:5.1f}s", file=sys.stderr, flush=True)
            else:
                recs.append(rec)
    report(recs, summarize(recs, ["bm25", *kinds]), a.out)


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def span_scores(recs: list[dict], kind: str) -> dict:
    """Mean tail share of the top-3 spans and hit@1/3 of the gold clause, for one kind of provenance."""
    rows = [([tuple(s) for s in r["spans"][kind]], [tuple(g) for g in r["gold"]], r["chars"])
            for r in recs if kind in r["spans"]]
    return {"tail": M.mean(tail_share(s, n) for s, _, n in rows),
            **{f"hit@{k}": M.mean(M.hit_at_k(s, g, k) for s, g, _ in rows) for k in (1, 3)}}


def report(recs: list[dict], table: str, out: str | None) -> None:
    print(table)
    if out:
        Path(out).write_text(json.dumps({"records": recs, "table": table}, indent=1))


def summarize(recs: list[dict], kinds: list[str]) -> str:
    lines = [f"{len(recs)} questions on {len({r['pdf'] for r in recs})} contracts",
             "| provenance | top-3 spans in the last 2% | hit@1 | hit@3 |", "|---|---|---|---|"]
    for kind in kinds:
        s = span_scores(recs, kind)
        lines.append(f"| {kind} | {fmt(s['tail'])} | {fmt(s['hit@1'])} | {fmt(s['hit@3'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
