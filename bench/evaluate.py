"""Answer and provenance evaluation of docreader (issue 6): `make eval` (quick) / `make eval FULL=1`.

    python -m bench.evaluate [--full] [--data PATH ...] [--out FILE] [--only needle,contracts,meetings,faith,grounded]

Reads data in the formats of ../shared/data/README.md from `--data` (directories or single .jsonl[.xz]
files, any number; default ../shared/data), runs

1. needle in a haystack (passkey + key-value needle in held-out book text, lengths x depths, DSA vs dense);
2. contracts (CUAD): provenance hit@k vs gold clauses, answer token-F1, absent-clause detection;
3. meetings (QMSum): message-level provenance hit@k vs gold turns, answer token-F1;
4. faithfulness: ContextCite-style log-probability drop, top provenance spans vs random spans;
5. cost: tokens, prefill/decode seconds, sparse vs dense;
6. grounded: bench.eval_grounded (Quote/Answer replies, base vs tuned model) with this run's preset, data and
   seed, its JSON beside this one (<out>-grounded.json) and its tables printed after these;

against BM25 / MiniLM-embedding / random windows and dense-attention provenance, writes one JSON file
(bench/results/eval-<date>.json by default) and prints markdown tables. Every knob is a flag; quick and
full only change the defaults. Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import eval_data as D  # noqa: E402
from bench import eval_metrics as M  # noqa: E402
from bench.eval_qa import add_baselines, ask_document, log, score_provenance, summarize_cost, summarize_provenance  # noqa: E402

QUICK = dict(needle_lengths="1024,4096", depths="0,0.5,1", needle_tokens=16,
             contracts=2, contract_chars="3000,8000", present=2, absent=1,
             meetings=1, meeting_chars="4000,9000", queries=2,
             max_new_tokens=24, faith_questions=3, faith_k=3, faith_random=2, faith_mode="dense",
             faith_methods="dsa")
FULL = dict(needle_lengths="1024,2048,4096,8192,16384,32000", depths="0,0.25,0.5,0.75,1", needle_tokens=20,
            contracts=10, contract_chars="3000,60000", present=None, absent=None,
            meetings=6, meeting_chars="4000,60000", queries=None,
            max_new_tokens=64, faith_questions=30, faith_k=3, faith_random=3, faith_mode="sparse",
            faith_methods="dsa,attn,bm25")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the full evaluation (hours on a CPU)")
    ap.add_argument("--data", nargs="+", default=[str(ROOT.parent / "shared" / "data")],
                    help="data directories and/or .jsonl[.xz] files (default ../shared/data)")
    ap.add_argument("--out", help="JSON results file (default bench/results/eval-<date>.json)")
    ap.add_argument("--only", default="needle,contracts,meetings,faith,grounded", help="comma-separated parts to run")
    ap.add_argument("--model", default=None, help="docreader model spec (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weighting", default="picks", choices=("picks", "choice", "attention"),
                    help="how DSA spans weigh the recorded keys (docreader.provenance)")
    ap.add_argument("--no-embed", action="store_true", help="skip the MiniLM baseline")
    ap.add_argument("--window-words", type=int, default=64, help="words per retrieval-baseline window")
    ap.add_argument("--report", metavar="JSON", help="only print the tables of an earlier results file")
    ap.add_argument("--all-docs", action="store_true", help="do not prefer documents held out from indexer training")
    g = ap.add_argument_group("sizes (defaults: quick or --full)")
    g.add_argument("--needle-lengths", help="prompt lengths in tokens, comma-separated")
    g.add_argument("--depths", help="needle depths in [0, 1], comma-separated")
    g.add_argument("--needle-tokens", type=int, help="max new tokens for needle answers")
    add_document_args(g)
    g.add_argument("--max-new-tokens", type=int, help="max new tokens per answer")
    g.add_argument("--faith-questions", type=int, help="answers tested for faithfulness")
    g.add_argument("--faith-k", type=int, help="top spans removed")
    g.add_argument("--faith-random", type=int, help="random removals per answer")
    g.add_argument("--faith-mode", choices=("sparse", "dense"), help="attention used to re-score answers")
    g.add_argument("--faith-methods", help="provenance kinds tested: dsa,attn,bm25,embed")
    a = ap.parse_args(argv)
    for k, v in (FULL if a.full else QUICK).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def add_document_args(g) -> None:
    """Which contracts and meetings, and how many questions (shared with bench.eval_grounded)."""
    g.add_argument("--contracts", type=int, help="number of contracts")
    g.add_argument("--contract-chars", help="lo,hi characters of a contract (longer ones are cut to hi if too few fit)")
    g.add_argument("--present", type=int, help="answerable questions per contract (preset None: all)")
    g.add_argument("--absent", type=int, help="questions without a clause per contract (preset None: all)")
    g.add_argument("--meetings", type=int, help="number of meetings")
    g.add_argument("--meeting-chars", help="lo,hi characters of a transcript (longer ones are cut to hi if too few fit)")
    g.add_argument("--queries", type=int, help="specific queries per meeting (preset None: all)")


def parse_range(s: str) -> tuple[int, int]:
    lo, hi = (int(x) for x in s.split(","))
    return lo, hi


def meeting_chars(row: dict) -> int:
    """Characters of a transcript as rendered (speaker, content and separators per turn)."""
    return sum(_turn_chars(t) for t in row["transcript"])


def _turn_chars(t: dict) -> int:
    return len(str(t.get("content", ""))) + len(str(t.get("speaker", ""))) + 3


def turns_within(row: dict, hi: int) -> int:
    """How many leading turns fit in hi characters."""
    total, n = 0, 0
    for t in row["transcript"]:
        total += _turn_chars(t)
        if total > hi:
            break
        n += 1
    return n


def choose(rows: list[dict], n: int, size, lo: int, hi: int, prefer: bool) -> list[tuple[dict, bool]]:
    """n rows that fit [lo, hi]; if too few, the shortest longer ones, to be cut (flag True)."""
    fit = D.pick(rows, n, size, lo, hi, prefer)
    if len(fit) < n:
        longer = sorted((r for r in rows if size(r) > hi), key=lambda r: (not D.held_out(r["name"]) if prefer else 0, size(r)))
        return [(r, False) for r in fit] + [(r, True) for r in longer[: n - len(fit)]]
    return [(r, False) for r in fit]


def run_contracts(reader, rows, a, embedder, faith_pool) -> tuple[dict, list]:
    lo, hi = parse_range(a.contract_chars)
    picked = choose(rows, a.contracts, lambda r: len(r["text"]), lo, hi, not a.all_docs)
    records = []
    for row, cut in picked:
        doc, kept = D.contract_document(row, hi if cut else None)
        qs = D.contract_questions(row, kept, a.present, a.absent)
        if not qs:
            continue
        log(f"contract {row['name'][:60]!r}: {len(doc.text):,} chars{' (cut)' if cut else ''}, {len(qs)} questions")
        recs = ask_document(reader, doc, qs, a.max_new_tokens)
        add_baselines(doc, qs, recs, embedder, a.window_words, None, a.seed)
        score_provenance(recs, [q["gold"] for q in qs])
        for q, rec in zip(qs, recs):
            rec.update({"doc": row["name"], "category": q["category"], "absent": not q["gold"],
                        "gold_text": q["gold_text"], "cut": cut})
            rec["absent_said"] = {m: M.says_absent(t) for m, t in rec["answers"].items()}
            if q["gold"]:
                rec["f1"] = {m: M.best_f1(t, q["gold_text"]) for m, t in rec["answers"].items()}
                for kind in ("bm25", "embed"):
                    if rec["spans"].get(kind):
                        s, e = rec["spans"][kind][0]
                        rec["f1"][f"top {kind} window"] = M.best_f1(doc.text[s:e], q["gold_text"])
                faith_pool.append((doc, q, rec))
            records.append(rec)
    answers = {}
    for m in ("sparse", "dense", "top bm25 window", "top embed window"):
        present = [r for r in records if not r["absent"] and m in r.get("f1", {})]
        d = {"present_n": len(present), "f1": M.mean(r["f1"][m] for r in present)}
        if m in ("sparse", "dense"):
            d.update(M.absent_scores([(r["absent"], r["absent_said"][m]) for r in records if m in r["absent_said"]]))
        answers[{"sparse": "model, DSA sparse", "dense": "model, dense"}.get(m, m)] = d
    summary = {"docs": len({r["doc"] for r in records}), "questions": len(records),
               "provenance": summarize_provenance(records), "answers": answers, "cost": summarize_cost(records)}
    return summary, records


def run_meetings(reader, rows, a, embedder, faith_pool) -> tuple[dict, list]:
    lo, hi = parse_range(a.meeting_chars)
    picked = choose(rows, a.meetings, meeting_chars, lo, hi, not a.all_docs)
    records = []
    for row, cut in picked:
        doc = D.meeting_document(row, turns_within(row, hi) if cut else None)
        qs = D.meeting_queries(row, doc, a.queries)
        if not qs:
            continue
        log(f"meeting {row['name']!r}: {len(doc.text):,} chars{' (cut)' if cut else ''}, {len(qs)} queries")
        recs = ask_document(reader, doc, qs, a.max_new_tokens)
        add_baselines(doc, qs, recs, embedder, a.window_words, D.message_regions(doc), a.seed)
        score_provenance(recs, [q["gold"] for q in qs])
        for q, rec in zip(qs, recs):
            rec.update({"doc": row["name"], "turns": q["turns"], "reference": q["reference"], "cut": cut,
                        "f1": {m: M.token_f1(t, q["reference"]) for m, t in rec["answers"].items()}})
            faith_pool.append((doc, q, rec))
            records.append(rec)
    answers = {{"sparse": "model, DSA sparse", "dense": "model, dense"}[m]:
               {"n": len(records), "f1": M.mean(r["f1"].get(m) for r in records)} for m in ("sparse", "dense")}
    summary = {"docs": len({r["doc"] for r in records}), "questions": len(records),
               "provenance": summarize_provenance(records), "answers": answers, "cost": summarize_cost(records)}
    return summary, records


def run_faith(reader, pool, a) -> tuple[dict, list]:
    from bench.eval_faith import drop_test

    methods = [m for m in a.faith_methods.split(",") if m]
    answer_mode = {"dsa": "sparse", "attn": "dense", "dsa_dense": "dense", "bm25": "sparse", "embed": "sparse"}
    # spread the budget over documents: round-robin by document
    by_doc: dict = {}
    for item in pool:
        by_doc.setdefault(item[0].path, []).append(item)
    order = []
    while len(order) < len(pool):
        for items in by_doc.values():
            if items:
                order.append(items.pop(0))
    records = []
    for i, (doc, q, rec) in enumerate(order[: a.faith_questions]):
        for m in methods:
            ans = rec["answers"].get(answer_mode[m], "")
            spans = rec["spans"].get(m) or []
            t0 = time.perf_counter()
            r = drop_test(reader.lm, doc, q["question"], ans, spans, a.faith_k, a.faith_random, a.seed + i, a.faith_mode)
            if r is None:
                continue
            r.update({"method": m, "doc": doc.path, "question": q["question"], "answer": ans,
                      "wall_s": round(time.perf_counter() - t0, 2)})
            log(f"faith {m:5s} drop top {r['base'] - r['top']:+.2f}  random "
                f"{r['base'] - sum(r['random']) / max(1, len(r['random'])):+.2f}  ({r['wall_s']:.0f}s)")
            records.append(r)
    summary = {}
    for m in methods:
        rows = [r for r in records if r["method"] == m]
        s = M.drop_summary(rows)
        if rows:
            s["k"] = a.faith_k
            s["removed_chars_mean"] = M.mean(r["removed_chars"] for r in rows)
        summary[{"dsa": "DSA indexer spans", "attn": "dense attention spans", "bm25": "BM25 windows",
                 "embed": "MiniLM windows", "dsa_dense": "DSA spans (dense answer)"}.get(m, m)] = s
    return summary, records


def describe(a, model_name: str, dsa_cfg: dict) -> str:
    return (f"data {', '.join(a.data)}; needle lengths {a.needle_lengths} x depths {a.depths} (max {a.needle_tokens} "
            f"new tokens); {a.contracts} CUAD contracts of {a.contract_chars} chars ({a.present or 'all'} answerable + "
            f"{a.absent or 'all'} absent questions each); {a.meetings} QMSum meetings of {a.meeting_chars} chars "
            f"({a.queries or 'all'} specific queries); max {a.max_new_tokens} new tokens, greedy; provenance = top-20 spans; "
            f"retrieval windows {a.window_words} words; faithfulness: {a.faith_questions} answers, top-{a.faith_k} spans "
            f"vs {a.faith_random} random removals, re-scored with {a.faith_mode} attention, methods {a.faith_methods}; "
            f"DSA top_k {dsa_cfg.get('top_k')}, n_blocks {dsa_cfg.get('n_blocks')}, sink {dsa_cfg.get('sink_tokens')}, "
            f"local {dsa_cfg.get('local_window')}; held-out documents preferred: {not a.all_docs}; seed {a.seed}; "
            f"CPU threads {os.cpu_count()}")


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.report:
        from bench.eval_report import render
        print(render(json.loads(Path(a.report).read_text())))
        return 0
    t_start = time.perf_counter()
    parts = set(p.strip() for p in a.only.split(",") if p.strip())
    import torch

    torch.manual_seed(a.seed)
    from docreader.engine import Reader

    out_path = Path(a.out) if a.out else ROOT / "bench" / "results" / f"eval-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if parts == {"grounded"}:
        return run_grounded(a, out_path)
    kinds = set()
    if "needle" in parts:
        kinds.add("book")
    if "contracts" in parts or "faith" in parts:
        kinds.add("contract")
    if "meetings" in parts or "faith" in parts:
        kinds.add("meeting")
    rows = D.read_all(a.data, kinds)
    log(f"data: {len(rows.books)} books, {len(rows.contracts)} contracts, {len(rows.meetings)} meetings")
    reader = Reader(model=a.model, overrides=None, db_path=str(out_path.with_suffix(".sqlite")), weighting=a.weighting,
                    disk_cache=False)  # prefill timings are measured, and evaluation documents need no entries
    lm = reader.lm
    import dataclasses

    dsa_cfg = dataclasses.asdict(lm.model.dsa_state.config)
    settings = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": lm.name,
                "indexer_weights": lm.indexer_weights, "mode": "full" if a.full else "quick", "dsa": dsa_cfg,
                "args": vars(a), "torch_threads": torch.get_num_threads()}
    settings["describe"] = describe(a, lm.name, dsa_cfg)
    result = {"settings": settings, "summary": {}, "records": {}}

    def save():
        settings["wall_s"] = time.perf_counter() - t_start
        out_path.write_text(json.dumps(result, indent=1, default=str))

    embedder = None
    if not a.no_embed and ({"contracts", "meetings"} & parts):
        from bench.eval_retrieval import Embedder
        embedder = Embedder()
    faith_pool: list = []
    cost = {}
    if "needle" in parts and rows.books:
        from bench import eval_needle as N
        books = [b for b in rows.books if a.all_docs or D.held_out(b["name"])] or rows.books
        books.sort(key=lambda b: D.hashlib.sha1(b["name"].encode()).hexdigest())
        recs = N.run(reader, books[:8], [int(x) for x in a.needle_lengths.split(",")],
                     [float(x) for x in a.depths.split(",")], a.needle_tokens, a.seed, log=log)
        result["records"]["needle"] = recs
        result["summary"]["needle"] = N.summarize(recs)
        cost["needle"] = summarize_cost(recs_as_cost(recs))
        save()
    if "contracts" in parts and rows.contracts:
        s, recs = run_contracts(reader, rows.contracts, a, embedder, faith_pool)
        result["summary"]["contracts"], result["records"]["contracts"] = s, recs
        cost["contracts"] = s.pop("cost")
        save()
    if "meetings" in parts and rows.meetings:
        s, recs = run_meetings(reader, rows.meetings, a, embedder, faith_pool)
        result["summary"]["meetings"], result["records"]["meetings"] = s, recs
        cost["meetings"] = s.pop("cost")
        save()
    if "faith" in parts and faith_pool:
        s, recs = run_faith(reader, faith_pool, a)
        result["summary"]["faithfulness"], result["records"]["faithfulness"] = s, recs
    result["summary"]["cost"] = cost
    save()
    from bench.eval_report import render

    print(render(result))
    print(f"\nJSON: {out_path}")
    if "grounded" in parts:
        run_grounded(a, out_path)
    log(f"done in {(time.perf_counter() - t_start) / 60:.1f} min")
    return 0


def run_grounded(a, out_path: Path) -> int:
    """bench.eval_grounded (base vs tuned model) with this run's preset, data and seed; prints its tables."""
    from bench import eval_grounded as G

    argv = ["--data", *a.data, "--seed", str(a.seed), "--out", str(out_path.with_name(out_path.stem + "-grounded.json"))]
    res = G.run(G.parse_args(argv + ["--full"] * a.full + ["--no-embed"] * a.no_embed))
    print("\n" + G.render(res))
    print(f"\nJSON: {res['json']}")
    return 0


def recs_as_cost(recs: list[dict]) -> list[dict]:
    """Needle records (one per question and mode) in the shape summarize_cost expects."""
    return [{"cost": {r["mode"]: r["cost"]}} for r in recs]


if __name__ == "__main__":
    sys.exit(main())
