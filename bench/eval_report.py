"""Markdown tables from the evaluation's summary dict (the same dict that goes into the JSON file)."""

from __future__ import annotations

PROV_LABEL = {"dsa": "DSA indexer spans (sparse answer)",
              "attn": "dense attention weights", "bm25": "BM25, fixed windows", "embed": "MiniLM embeddings, fixed windows",
              "random": "random windows"}


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(lines)


def needle_table(s: dict) -> str:
    keys = sorted({tuple(k.split("|")[:2]) for k in s}, key=lambda t: (int(t[0]), t[1] == "all", t[1]))
    rows = []
    for length, depth in keys:
        sp, de = s.get(f"{length}|{depth}|sparse", {}), s.get(f"{length}|{depth}|dense", {})
        d = "all" if depth == "all" else f"{float(depth) * 100:.0f}%"
        rows.append([length, d, sp.get("n"), sp.get("acc_passkey"), sp.get("acc_kv"), de.get("acc_passkey"),
                     de.get("acc_kv"), sp.get("dsa_in_spans"), sp.get("dsa_hit@3"),
                     de.get("attn_in_spans"), de.get("attn_hit@3")])
    return table(["length (tokens)", "depth", "questions", "DSA passkey acc", "DSA kv acc", "dense passkey acc",
                  "dense kv acc", "needle in DSA spans (top-20)", "in DSA top-3",
                  "in dense-attn spans (top-20)", "in dense-attn top-3"], rows)


def provenance_table(s: dict) -> str:
    rows = [[PROV_LABEL.get(k, k), v["n"], v["hit@1"], v["hit@3"], v["hit@5"], v["mrr"], v["cover@3"],
             round(v["chars@3"]) if v["chars@3"] is not None else None] for k, v in s.items()]
    return table(["provenance", "questions", "hit@1", "hit@3", "hit@5", "MRR", "gold covered by top-3",
                  "mean chars / span (top-3)"], rows)


def contract_answer_table(s: dict) -> str:
    rows = []
    for name, v in s.items():
        rows.append([name, v.get("present_n"), v.get("f1"), v.get("absent_n"), v.get("absent_recall"),
                     v.get("false_absent_rate"), v.get("absent_f1")])
    return table(["answers from", "answerable questions", "token-F1 vs gold clause", "absent questions",
                  "says absent when absent", "says absent when present", "absent-detection F1"], rows)


def meeting_answer_table(s: dict) -> str:
    rows = [[name, v.get("n"), v.get("f1")] for name, v in s.items()]
    return table(["answers from", "queries", "token-F1 vs reference answer"], rows)


def faith_table(s: dict) -> str:
    rows = []
    for name, v in s.items():
        if not v.get("n"):
            continue
        rows.append([name, v["n"], v.get("k"), round(v.get("removed_chars_mean") or 0), v["top_drop_mean"],
                     v["random_drop_mean"], v["top_drop_median"], v["random_drop_median"], v["top_beats_random"]])
    return table(["spans removed", "answers", "k", "chars removed (mean)", "log-p drop, top-k (mean)",
                  "log-p drop, random (mean)", "top-k median", "random median", "top-k drop > random"], rows)


def cost_table(s: dict) -> str:
    rows = []
    for task, modes in s.items():
        for mode, v in modes.items():
            rows.append([task, mode, v["questions"], v["docs_prefilled"], round(v["prompt_tokens_mean"] or 0),
                         v["prefill_s_uncached"], v["prefill_tok_per_s"], v["prefill_s"], v["decode_s"],
                         v["new_tokens"], v["decode_tok_per_s"]])
    return table(["task", "attention", "questions", "document prefills", "prompt tokens (mean)",
                  "prefill s (documents)", "prefill tok/s", "prefill s (all)", "decode s", "new tokens",
                  "decode tok/s"], rows)


def render(result: dict) -> str:
    s, meta = result["summary"], result["settings"]
    out = [f"### Evaluation {meta['date']} — {meta['model']} ({meta['mode']} mode)",
           "",
           f"Settings: {meta['describe']}",
           ""]
    if "needle" in s:
        out += ["#### Needle in a haystack (accuracy = expected number in the answer)", "", needle_table(s["needle"]), ""]
    if "contracts" in s:
        c = s["contracts"]
        out += [f"#### Contracts (CUAD): provenance vs gold clauses, {c['docs']} contracts", "",
                provenance_table(c["provenance"]), "", "Answers:", "", contract_answer_table(c["answers"]), ""]
    if "meetings" in s:
        m = s["meetings"]
        out += [f"#### Meetings (QMSum): message-level provenance vs gold turns, {m['docs']} meetings", "",
                provenance_table(m["provenance"]), "", "Answers:", "", meeting_answer_table(m["answers"]), ""]
    if "faithfulness" in s:
        out += ["#### Faithfulness (ContextCite-style: drop in the answer's log-probability, nats)", "",
                faith_table(s["faithfulness"]), ""]
    if "cost" in s:
        out += ["#### Cost", "", cost_table(s["cost"]), ""]
    out.append(f"Wall time: {meta.get('wall_s', 0) / 60:.1f} min.")
    return "\n".join(out)
