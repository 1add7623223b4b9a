"""Which span weighting is most faithful? One answer per question, its spans under every weighting.

    python -m bench.eval_weightings [--data CUAD_JSONL] [--contracts 8] [--questions 2] [--chars 6000,12000]

Each CUAD contract (held-out names first, a length range) is asked `--questions` answerable questions
(CUAD's "Details:" sentence) once in sparse mode; the same question is then re-asked with each span
weighting (the document prefix is cached, so only the question and answer are recomputed; greedy answers
are the same). Per weighting, and for BM25 windows in the same run:
- faithfulness: ContextCite's top-k drop (`eval_faith.drop_test`): removing the top-3 spans vs 3 random
  spans of equal length, the answer re-scored with dense attention;
- tail share of the top-3 spans (last 2% of the document) and hit@3 of the gold clause.
`legacy` emulates the record before 2026-12-03 (every attended key but the sink, the local window counted
whole, weighted by indexer score) by swapping `dsa.select.chosen_record`, for the before/after comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import eval_data as D  # noqa: E402
from bench import eval_metrics as M  # noqa: E402
from bench.eval_retrieval import fixed_windows, rank_bm25  # noqa: E402
from bench.eval_tail import fmt, natural_question, report, span_scores  # noqa: E402


def legacy_record(sel, qpos, cfg):
    """The old record: every attended key apart from the sink (picks and the whole local window)."""
    import torch
    keep = sel.mask & (sel.tokens >= cfg.sink_tokens)[None, :]
    val, ix = sel.scores.masked_fill(~keep, float("-inf")).topk(max(int(keep.sum(-1).max()), 1), dim=-1)
    return torch.where(val > float("-inf"), sel.tokens[ix], torch.full_like(ix, -1)), val, sel.blocks


def spans_with(reader, doc, question: str, weighting: str, new: int):
    from dsa import attention
    reader.weighting = "choice" if weighting == "legacy" else weighting
    saved = attention.chosen_record
    if weighting == "legacy":
        attention.chosen_record = legacy_record
    try:
        return reader.ask(doc, question, max_new_tokens=new, log=False)
    finally:
        attention.chosen_record = saved


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cuad" / "train.jsonl.xz"))
    ap.add_argument("--contracts", type=int, default=8)
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--chars", default="6000,12000")
    ap.add_argument("--weightings", default="legacy,picks,choice,attention")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--random", type=int, default=3, help="random removals per answer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from bench.eval_faith import drop_test
    from docreader.engine import Reader

    lo, hi = (int(x) for x in a.chars.split(","))
    rows = D.read_all([a.data], {"contract"}).contracts
    reader = Reader(disk_cache=False)
    kinds = a.weightings.split(",")
    recs = []
    for row in D.pick(rows, a.contracts, lambda r: len(r["text"]), lo, hi):
        doc, kept = D.contract_document(row)
        qs = [q for q in D.contract_questions(row, kept, None, None) if q["gold"]]
        qs = qs[:: max(1, len(qs) // a.questions)][: a.questions]
        wins = fixed_windows(doc.text, 64)
        for i, q in enumerate(qs):
            question = natural_question(q["question"])
            rec = {"doc": row["name"], "question": question, "gold": q["gold"], "chars": len(doc.text),
                   "spans": {"bm25": [list(r) for r in rank_bm25(question, wins)[:20]]}, "faith": {}}
            for kind in kinds:
                ans = spans_with(reader, doc, question, kind, a.max_new_tokens)
                rec["spans"][kind] = [[s.char_start, s.char_end] for s in ans.spans]
                rec.setdefault("answer", ans.text)
            base = None
            for kind in ["bm25", *kinds]:
                t0 = time.perf_counter()
                r = drop_test(reader.lm, doc, question, rec["answer"], rec["spans"][kind], 3, a.random,
                              a.seed + i, "dense", base=base)
                base = r["base"] if r else base
                rec["faith"][kind] = r
                if r:
                    print(f"[{time.strftime('%H:%M:%S')}] {row['name'][:30]:30s} {kind:9s} top drop "
                          f"{r['base'] - r['top']:+.2f} random {r['base'] - sum(r['random']) / len(r['random']):+.2f} "
                          f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
            recs.append(rec)
    report(recs, summarize(recs, ["bm25", *kinds]), a.out)


def summarize(recs: list[dict], kinds: list[str]) -> str:
    lines = [f"{len(recs)} answers on {len({r['doc'] for r in recs})} contracts",
             "| provenance | n | top-3 drop (nats) | random drop | top beats random | tail share of top-3 | hit@3 |",
             "|---|---|---|---|---|---|---|"]
    for kind in kinds:
        s = M.drop_summary([r["faith"][kind] for r in recs if r["faith"].get(kind)])
        sc = span_scores(recs, kind)
        lines.append(f"| {kind} | {s['n']} | {fmt(s.get('top_drop_mean'))} | {fmt(s.get('random_drop_mean'))} | "
                     f"{fmt(s.get('top_beats_random'))} | {fmt(sc['tail'])} | {fmt(sc['hit@3'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
