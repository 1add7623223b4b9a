"""Grounded answers, base vs tuned (issue 17): the same held-out questions through `Reader.ask` (DSA sparse,
the `docreader ask` path, not logged) for each model of --models, scored on the Quote/Answer format of
prompts/system.txt (as Reader.ask parses and verifies it: docreader.quotes), tables side by side with the targets.

    python -m bench.eval_grounded                        # quick: a few minutes on a 2-core CPU
    DOCREADER_DEVICE=cuda python -m bench.eval_grounded --full
    python -m bench.eval_grounded --report bench/results/grounded-<date>.json

Parts (--only): contracts (CUAD), meetings (QMSum specific queries), babilong (bAbI facts spread through
book text); questions from bench.sft_tasks (the fine-tuning data's generators) on held-out documents only
(bench.eval_data.held_out) and bAbI stories of split "eval". Metrics and targets: bench/README.md.

All questions of one document are asked consecutively, model after model, before the next document (the
prefix cache prefills it once per model; a --time-budget cut leaves every model the same documents).
Progress goes to stderr, tables to stdout, everything to --out (rewritten after every document).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import eval_data as D  # noqa: E402
from bench import eval_metrics as M  # noqa: E402
from bench.eval_qa import add_baselines, log, score_provenance  # noqa: E402
from bench.eval_report import fmt, table  # noqa: E402
from bench.evaluate import add_document_args, choose, meeting_chars, parse_range, turns_within  # noqa: E402

PARTS = ("contracts", "meetings", "babilong")
MODELS = "smollm2-135m-instruct-base,smollm2-135m-instruct"
QUICK = dict(contracts=2, contract_chars="2000,4500", present=2, absent=1, meetings=1, meeting_chars="2000,4500",
             queries=1, babi_lengths="4096", babi_tasks="1", babi_cells="", babi_n=2, contract_tokens=48, meeting_tokens=48,
             babi_tokens=24, time_budget=None)
FULL = dict(contracts=12, contract_chars="3000,60000", present=4, absent=3, meetings=8, meeting_chars="4000,90000",
            queries=3, babi_lengths="32768,131072", babi_tasks="1,2", babi_n=15,
            babi_cells="qa1@32768,qa1@131072,qa2@32768", contract_tokens=64,
            meeting_tokens=96, babi_tokens=40, time_budget=270)
BABI_TARGETS = {(1, 32768): 0.90, (1, 131072): 0.80, (2, 32768): 0.60}
PROMPT_ROOM = 320  # babilong: tokens of system prompt, template and question kept free of the length (plus the answer)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the GPU preset (about 6 minutes on one H200 for both models)")
    ap.add_argument("--models", default=MODELS, help=f"comma-separated docreader model specs (default {MODELS})")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ",".join(PARTS))
    ap.add_argument("--data", nargs="+", default=[str(ROOT.parent / "shared" / "data")],
                    help="data directories and/or .jsonl[.xz] files (default ../shared/data)")
    ap.add_argument("--babi", help="bAbI tar (default <first --data dir>/babi/en-10k-train.tar.xz)")
    ap.add_argument("--out", help="JSON results file (default bench/results/grounded-<date>.json)")
    ap.add_argument("--report", metavar="JSON", help="only print the tables of an earlier results file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-embed", action="store_true", help="skip the MiniLM baseline")
    ap.add_argument("--window-words", type=int, default=64, help="words per retrieval-baseline window")
    g = ap.add_argument_group("sizes (defaults: quick or --full)")
    add_document_args(g)  # --contracts --contract-chars --present --absent --meetings --meeting-chars --queries
    g.add_argument("--babi-lengths", help="babilong prompt lengths in tokens, comma-separated")
    g.add_argument("--babi-tasks", help="bAbI tasks, comma-separated (1, 2, 3)")
    g.add_argument("--babi-cells", help="task@length pairs instead of tasks x lengths, e.g. qa1@32768,qa2@4096 "
                   "(--full: the three with targets, unless --babi-tasks/--babi-lengths are given)")
    g.add_argument("--babi-n", type=int, help="stories per (task, length)")
    g.add_argument("--max-new-tokens", type=int, help="max new tokens of every answer (overrides the three below)")
    g.add_argument("--contract-tokens", type=int, help="max new tokens of a contract answer")
    g.add_argument("--meeting-tokens", type=int, help="max new tokens of a meeting answer")
    g.add_argument("--babi-tokens", type=int, help="max new tokens of a babilong answer")
    g.add_argument("--time-budget", type=float, help="seconds of asking, shared by the parts in order (quick: none)")
    a = ap.parse_args(argv)
    if set(a.only.split(",")) - set(PARTS):
        ap.error(f"--only takes {','.join(PARTS)} (got {a.only})")
    if (a.babi_tasks or a.babi_lengths) and a.babi_cells is None:
        a.babi_cells = ""  # the product of the given tasks and lengths
    for k, v in (FULL if a.full else QUICK).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.max_new_tokens:
        a.contract_tokens = a.meeting_tokens = a.babi_tokens = a.max_new_tokens
    a.babi = a.babi or str(Path(a.data[0]) / "babi" / "en-10k-train.tar.xz")
    a.argv = list(sys.argv[1:] if argv is None else argv)
    return a


# --- scoring (pure functions of the reply text, the document and the gold ranges) -------------------------

def in_gold_share(start: int, end: int, gold) -> float:
    """Share of [start, end) inside the union of the gold ranges."""
    if end <= start:
        return 0.0
    return sum(M.overlap_chars((start, end), g) for g in M.merge_ranges(gold)) / (end - start)


def grade(answer: str, absent: bool, quotes: list, gold) -> dict:
    """Score a parsed reply (Reader.ask's answer_text, absent, quotes: docreader.quotes.Quote) against gold:
    quote_hit = some verified quote overlaps gold; quote_hit_strict = some verified quote has >= 50% of its
    characters in gold (both None without gold)."""
    qs = []
    for q in quotes:
        share = in_gold_share(q.char_start, q.char_end, gold) if q.verified and gold else 0.0
        qs.append({"text": q.text[:400], "verified": bool(q.verified), "score": q.score, "in_gold": share,
                   "range": [q.char_start, q.char_end] if q.verified else None})
    hit = (lambda cut: any(q["in_gold"] > cut for q in qs) if gold else None)  # in_gold is 0 unless verified
    return {"answer": answer, "absent_said": bool(absent), "quotes": qs,
            "quote_hit": hit(0.0), "quote_hit_strict": hit(0.5 - 1e-9)}


def grade_text(text: str, document, gold) -> dict:
    """grade() of a reply's raw text, parsed and verified the way Reader.ask does (docreader.quotes)."""
    from docreader import quotes

    parsed = quotes.parse(text)
    return grade(parsed.answer, parsed.absent, quotes.verify_all(parsed.quotes, document), gold)


def babi_correct(answer: str, answers: list[str]) -> bool:
    """A gold answer word appears as a whole word in the parsed answer (case-insensitive)."""
    return any(M.contains_value(answer.lower(), a.lower()) for a in answers)


def cell_order(c: str) -> tuple[str, int]:
    task, n = c.split("|")
    return task, int(n)


def quote_stats(rows: list[dict]) -> dict:
    n = sum(len(r["quotes"]) for r in rows)
    return {"quotes": n, "quotes_verified": sum(q["verified"] for r in rows for q in r["quotes"]) / n if n else None,
            "with_quote": M.mean(bool(r["quotes"]) for r in rows)}


def cost_stats(rows: list[dict]) -> dict:
    out = {k: round(sum(r["cost"][k] for r in rows), 2) for k in ("wall_s", "prefill_s", "decode_s", "new_tokens")}
    out["new_tokens"] = int(out["new_tokens"])
    return out


def summarize(part: str, recs: list[dict], model: str) -> dict:
    """One model's metrics over a part's records (questions it skipped as too long are left out)."""
    done = [r for r in recs if "skipped" not in r["by_model"].get(model, {"skipped": "not asked"})]
    rows = [r["by_model"][model] for r in done]
    with_gold = [r["by_model"][model] for r in done if r["gold"]]
    s = {"asked": len(rows), "skipped": len(recs) - len(done), **quote_stats(rows), **cost_stats(rows),
         "quote_hit": M.mean(x["quote_hit"] for x in with_gold),
         "quote_hit_strict": M.mean(x["quote_hit_strict"] for x in with_gold)}
    if part == "contracts":
        absent = [r["by_model"][model] for r in done if r["absent"]]
        s.update(n_present=len(with_gold), n_absent=len(absent), dsa_hit3=M.mean(x["dsa_hit@3"] for x in with_gold),
                 absent_said_absent=M.mean(x["absent_said"] for x in absent),
                 absent_said_present=M.mean(x["absent_said"] for x in with_gold))
        for kind in ("bm25", "embed"):
            s[f"{kind}_hit3"] = M.mean(r["baselines"][kind]["hit@3"] for r in done
                                       if r["gold"] and kind in r.get("baselines", {}))
    elif part == "meetings":
        s["f1"] = M.mean(x["f1"] for x in rows)
    elif part == "babilong":
        cells = sorted({r["meta"]["cell"] for r in recs}, key=cell_order)
        s["cells"] = {c: summarize("cell", [r for r in recs if r["meta"]["cell"] == c], model) for c in cells}
    elif part == "cell":
        s["acc"] = M.mean(x["correct"] for x in rows)
    return s


# --- asking -----------------------------------------------------------------------------------------------

def ask_one(reader, ex, max_new: int) -> dict:
    from docreader.errors import DocreaderError

    t0 = time.perf_counter()
    try:
        ans = reader.ask(ex.document, ex.question, history=ex.history or None, max_new_tokens=max_new,
                         dense=False, log=False, max_spans=5)
    except DocreaderError as e:  # e.g. longer than the model's window: counted as skipped, not as wrong
        log(f"    skipped: {e}")
        return {"skipped": str(e)}
    r = {"text": ans.text, **grade(ans.answer_text, ans.absent, ans.quotes, ex.gold),
         "spans": [[s.char_start, s.char_end] for s in ans.spans],
         "cost": {"prompt_tokens": ans.prompt_tokens, "new_tokens": ans.new_tokens, "prefill_s": ans.timings["prefill_s"],
                  "decode_s": ans.timings["decode_s"], "cached_prefix_tokens": ans.timings["cached_prefix_tokens"],
                  "wall_s": round(time.perf_counter() - t0, 3)}}
    if ex.gold:
        r["dsa_hit@3"] = M.hit_at_k([tuple(s) for s in r["spans"]], ex.gold, 3)
    if ex.kind == "meeting":
        r["f1"] = M.best_f1(r["answer"], ex.answers)
    if ex.kind.startswith("babi"):
        r["correct"] = babi_correct(r["answer"], ex.answers)
    log(f"    {r['cost']['prompt_tokens']:6d} tok  prefill {r['cost']['prefill_s']:6.1f}s  decode "
        f"{r['cost']['decode_s']:5.1f}s  {ans.text[:90]!r}")
    return r


def record(ex, cell: str | None = None) -> dict:
    meta = {k: v for k, v in (ex.meta or {}).items() if isinstance(v, (str, int, float, bool))}
    if cell:
        meta["cell"] = cell
    return {"kind": ex.kind, "doc": ex.name, "question": ex.question, "answers": list(ex.answers)[:3],
            "gold": [list(g) for g in ex.gold], "absent": ex.absent, "meta": meta, "by_model": {}}


def run_groups(part: str, groups: list[tuple], readers: dict, max_new: int, deadline: float | None,
               baselines: dict | None, recs: list[dict], save) -> int:
    """groups: (make() -> the examples of one document, babilong cell or None, number of questions). Each
    document: baselines, then every model; records are appended to recs as they are made (save() writes
    what is done so far). Returns the number of questions not asked because the deadline had passed."""
    late = 0
    for gi, (make, cell, n_questions) in enumerate(groups):
        if deadline is not None and time.perf_counter() > deadline:
            late += n_questions
            continue
        exs = make()
        rs = [record(ex, cell) for ex in exs]
        recs += rs
        doc = exs[0].document
        log(f"{part} {gi + 1}/{len(groups)} {exs[0].name[:60]!r}{' ' + cell if cell else ''}: "
            f"{len(doc.text):,} chars, {len(exs)} questions")
        if baselines is not None:
            tmp = [{"spans": {}} for _ in exs]
            add_baselines(doc, [{"question": ex.question} for ex in exs], tmp, baselines.get("embedder"),
                          baselines["window_words"], None, baselines["seed"], max_spans=5)
            score_provenance(tmp, [ex.gold for ex in exs], ks=(3,))
            for r, t in zip(rs, tmp):
                r["baselines"] = {k: {"hit@3": v["hit@3"]} for k, v in t.get("prov", {}).items() if k != "random"}
        for name, reader in readers.items():
            log(f"  {name}")
            for ex, r in zip(exs, rs):
                r["by_model"][name] = ask_one(reader, ex, max_new)
            reader._prefix = None  # this document is done: free its KV cache before the next model's
        save()
    return late


def _ready(exs: list) -> tuple:
    return (lambda: exs), None, len(exs)


def contract_groups(rows: list[dict], a) -> list[tuple]:
    from bench.sft_tasks import contract_examples

    lo, hi = parse_range(a.contract_chars)
    held = [r for r in rows if D.held_out(r["name"])]
    out = []
    for row, cut in choose(held, a.contracts, lambda r: len(r["text"]), lo, hi, True):
        exs = contract_examples(row, random.Random(f"{a.seed}:{row['name']}"), a.present, a.absent,
                                max_chars=hi if cut else None)
        if exs:
            out.append(_ready(exs))
    return out


def meeting_groups(rows: list[dict], a) -> list[tuple]:
    from bench.sft_tasks import meeting_examples

    lo, hi = parse_range(a.meeting_chars)
    held = [r for r in rows if D.held_out(r["name"])]
    out = []
    for row, cut in choose(held, a.meetings, meeting_chars, lo, hi, True):
        exs = meeting_examples(row, random.Random(f"{a.seed}:{row['name']}"), a.queries,
                               max_turns=turns_within(row, hi) if cut else None)
        if exs:
            out.append(_ready(exs))
    return out


def babi_cells(a) -> list[tuple[int, int]]:
    if a.babi_cells:
        return [(int(t.split("@")[0].removeprefix("qa")), int(t.split("@")[1])) for t in a.babi_cells.split(",") if t]
    return [(int(t), int(n)) for t in a.babi_tasks.split(",") if t for n in a.babi_lengths.split(",") if n]


def babilong_groups(a, tokenizer) -> list[tuple]:
    """One document per story, built when asked (a 128k-token one takes seconds); the cells interleaved
    (story j of every cell before story j + 1), so that a time-budget cut leaves every cell some items."""
    from bench.eval_long import held_out_books
    from bench.sft_tasks import babilong_example, chars_for, load_babi

    books = [b["text"] for b in held_out_books(a.data)]
    cells = babi_cells(a)
    stories = {t: load_babi(a.babi, t, "eval") for t in sorted({t for t, _ in cells})}

    def make(t: int, n: int, j: int) -> list:
        """A document of 95-100% of n - PROMPT_ROOM - answer tokens (so the prompt fits in n): built from a
        characters-per-token estimate, rebuilt (same seed) with the measured ratio until it fits."""
        n_doc = n - PROMPT_ROOM - a.babi_tokens
        n_chars, best = chars_for(tokenizer, books, n_doc), None
        for _ in range(4):
            rng = random.Random(f"{a.seed}:babi:{t}:{n}:{j}")
            story = stories[t][rng.randrange(len(stories[t]))]
            ex = babilong_example(story, books, n_chars, rng, f"babilong-qa{t}-{n}-{j}")
            got = len(tokenizer(ex.document.text, add_special_tokens=False)["input_ids"])
            if got <= n_doc and (best is None or got > best[1]):
                best = ex, got
            if 0.95 * n_doc <= got <= n_doc:
                break
            n_chars = int(n_chars * n_doc / got * 0.985)
        ex, got = best or (ex, got)
        ex.meta.update(tokens=got)
        return [ex]

    return [((lambda t=t, n=n, j=j: make(t, n, j)), f"qa{t}|{n}", 1) for j in range(a.babi_n) for t, n in cells]


# --- tables -----------------------------------------------------------------------------------------------

# (summary key, label[, "<=" or ">=", target])
CONTRACT_ROWS = [("quote_hit", "verified quote overlaps gold clause (answerable)", ">=", 0.60),
                 ("quote_hit_strict", "verified quote ≥ 50% inside gold (answerable)"),
                 ("absent_said_absent", "\"does not say\" when the clause is absent", ">=", 0.80),
                 ("absent_said_present", "\"does not say\" when the clause is there", "<=", 0.10),
                 ("quotes_verified", "quotes that verify (all questions)", ">=", 0.95),
                 ("dsa_hit3", "gold clause in DSA top-3 spans", ">=", 0.75),
                 ("bm25_hit3", "gold clause in BM25 top-3 windows (baseline)"),
                 ("embed_hit3", "gold clause in MiniLM top-3 windows (baseline)")]
MEETING_ROWS = [("f1", "answer token-F1 vs reference"), ("quote_hit", "verified quote overlaps gold turns"),
                ("quotes_verified", "quotes that verify")]
COMMON_ROWS = [("with_quote", "answers with a quote"), ("quotes", "quotes given"), ("asked", "questions asked"),
               ("skipped", "skipped (too long for the model)"), ("wall_s", "seconds asking"),
               ("prefill_s", "prefill s"), ("decode_s", "decode s"), ("new_tokens", "new tokens")]


def meets(v, op, target) -> bool | None:
    if v is None or op is None:
        return None
    return v >= target if op == ">=" else v <= target


def cell(v, op=None, target=None, digits: int = 3) -> str:
    ok = meets(v, op, target)
    return fmt(v, digits) + ("" if ok is None else " ✓" if ok else " ✗")


def metric_table(by_model: dict, rows: list) -> str:
    models = list(by_model)
    body = []
    for k, label, *goal in rows:
        op, target = goal or (None, None)
        digits = 1 if k.endswith("_s") else 3  # seconds to a tenth
        body.append([label, f"{op} {target:.2f}" if op else ""]
                    + [cell(by_model[m].get(k), op, target, digits) for m in models])
    return table(["metric", "target"] + models, body)


def render_part(part: str, p: dict) -> str:
    s = p["summary"]
    head = f"#### {part}: {p['items']} questions, {p['docs']} documents, {p['wall_s'] / 60:.1f} min"
    if p.get("budget_skipped"):
        head += f" ({p['budget_skipped']} questions past the time budget not asked)"
    if part == "contracts":
        return "\n\n".join([head, metric_table(s, CONTRACT_ROWS + COMMON_ROWS)])
    if part == "meetings":
        out = [head, metric_table(s, MEETING_ROWS + COMMON_ROWS)]
        models = list(s)
        if len(models) > 1 and s[models[0]].get("f1") and s[models[-1]].get("f1") is not None:
            r = s[models[-1]]["f1"] / s[models[0]]["f1"]
            out.append(f"F1 ratio {models[-1]} / {models[0]}: {r:.2f} (target ≥ 1.5: {'met' if r >= 1.5 else 'missed'})")
        return "\n\n".join(out)
    rows, flat = [], {m: dict(s[m]) for m in s}
    for c in sorted({c for m in s for c in s[m]["cells"]}, key=cell_order):
        task, n = c.split("|")
        name, target = f"{task} @ {int(n):,} tokens", BABI_TARGETS.get((int(task[2:]), int(n)))
        rows += [(f"{c}|acc", f"{name}: accuracy", ">=" if target else None, target),
                 (f"{c}|quote_hit", f"{name}: verified quote on a supporting fact"),
                 (f"{c}|quotes_verified", f"{name}: quotes that verify"), (f"{c}|asked", f"{name}: asked (skipped)")]
        for m in s:
            v = s[m]["cells"].get(c, {})
            flat[m].update({f"{c}|{k}": v.get(k) for k in ("acc", "quote_hit", "quotes_verified")})
            flat[m][f"{c}|asked"] = f"{v.get('asked', 0)} ({v.get('skipped', 0)})"
    return "\n\n".join([head, metric_table(flat, rows + COMMON_ROWS[4:])])


def render(result: dict) -> str:
    st = result["settings"]
    out = [f"### Grounded answers {st['date']} ({st['mode']}): {', '.join(st['models'])}", "",
           f"Command: `{st['command']}`", "", f"Settings: {st['describe']}", ""]
    for part in PARTS:
        if "summary" in result["parts"].get(part, {}):
            out += [render_part(part, result["parts"][part]), ""]
    out.append(f"Wall time: {st.get('wall_s', 0) / 60:.1f} min.")
    return "\n".join(out)


def describe(a) -> str:
    return (f"{a.contracts} held-out contracts of {a.contract_chars} chars ({a.present} answerable + {a.absent} absent "
            f"questions, ≤ {a.contract_tokens} new tokens); {a.meetings} held-out meetings of {a.meeting_chars} chars "
            f"({a.queries} queries, ≤ {a.meeting_tokens}); babilong {a.babi_cells or f'qa{a.babi_tasks} x {a.babi_lengths}'} "
            f"tokens, {a.babi_n} eval stories each (≤ {a.babi_tokens}); DSA sparse, greedy; time budget "
            f"{a.time_budget or 'none'}; seed {a.seed}; device {os.environ.get('DOCREADER_DEVICE', 'cpu')}")


def run(a) -> dict:
    import torch

    from docreader.engine import Reader

    t_start = time.perf_counter()
    torch.manual_seed(a.seed)
    parts = [p for p in PARTS if p in a.only.split(",")]
    out_path = Path(a.out) if a.out else ROOT / "bench" / "results" / f"grounded-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    readers = {m: Reader(model=m, disk_cache=False) for m in models}  # measured prefills, no disk entries
    info = {m: {"name": r.lm.name, "adapter": r.lm.adapter, "indexer": r.lm.indexer_weights,
                "window": r.lm.context_window} for m, r in readers.items()}
    settings = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "mode": "full" if a.full else "quick",
                "models": models, "model_info": info, "args": {k: v for k, v in vars(a).items() if k != "argv"},
                "command": f"python -m bench.eval_grounded {shlex.join(a.argv)}".strip(), "describe": describe(a),
                "torch_threads": torch.get_num_threads()}
    result = {"settings": settings, "parts": {}}

    def save():
        settings["wall_s"] = time.perf_counter() - t_start
        out_path.write_text(json.dumps(result, indent=1, default=str))

    kinds = {"contracts": "contract", "meetings": "meeting"}
    rows = D.read_all(a.data, {kinds[p] for p in parts if p in kinds})
    embedder = None
    if "contracts" in parts and not a.no_embed:
        from bench.eval_retrieval import Embedder
        embedder = Embedder()
    t_ask = time.perf_counter()
    for i, part in enumerate(parts):
        t0 = time.perf_counter()
        deadline = t_ask + a.time_budget * (i + 1) / len(parts) if a.time_budget else None
        if part == "contracts":
            groups, max_new = contract_groups(rows.contracts, a), a.contract_tokens
        elif part == "meetings":
            groups, max_new = meeting_groups(rows.meetings, a), a.meeting_tokens
        else:
            groups, max_new = babilong_groups(a, readers[models[0]].lm.tokenizer), a.babi_tokens
        base = ({"embedder": embedder, "window_words": a.window_words, "seed": a.seed}
                if part == "contracts" else None)
        recs: list[dict] = []
        result["parts"][part] = p = {"records": recs}
        late = run_groups(part, groups, readers, max_new, deadline, base, recs, save)
        p.update(items=len(recs), docs=len({r["doc"] for r in recs}), budget_skipped=late,
                 summary={m: summarize(part, recs, m) for m in models}, wall_s=time.perf_counter() - t0)
        save()
    result["json"] = str(out_path)
    save()
    return result


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.report:
        try:
            report = json.loads(Path(a.report).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            sys.exit(f"error: {a.report}: cannot read a report of this tool ({type(e).__name__})")
        print(render(report))
        return 0
    result = run(a)
    print(render(result))
    print(f"\nJSON: {result['json']}")
    log(f"done in {result['settings']['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
