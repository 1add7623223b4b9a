"""Question answering over one whole document through `Reader.ask` (the `docreader ask` path), in DSA
sparse mode and then dense mode, with four kinds of provenance per question:

- `dsa`: the indexer's logged spans of the sparse answer (what the CLI prints);
- `attn`: dense attention weights of the question + answer tokens over the document (DenseAttentionProbe);
- `bm25`, `embed`, `random`: fixed windows of the document ranked by retrieval (eval_retrieval).

All questions of one document are asked consecutively per mode, so the document prefix is prefilled once
per mode (Reader keeps its KV + indexer cache).
"""

from __future__ import annotations

import sys
import time

from docreader.document import Document

from . import eval_metrics as M
from .eval_attention import DenseAttentionProbe, capturing
from .eval_retrieval import Embedder, fixed_windows, rank_bm25, rank_random

PROVENANCE = ("dsa", "attn", "bm25", "embed", "random")


def log(msg: str) -> None:
    print(f"[eval {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _ranges(spans) -> list[list[int]]:
    return [[s.char_start, s.char_end] for s in spans]


class DenseRunner:
    """Dense-attention answers with the same prompt and greedy decoding as `Reader.ask`, but without the
    indexer's selection recorder (which would run DSA selection on every dense decode step and make the
    dense baseline look slower than it is). Keeps its own document-prefix cache, like the Reader."""

    def __init__(self, reader):
        self.reader = reader
        self._prefix = None

    def ask(self, doc: Document, question: str, max_new_tokens: int, max_spans: int = 20):
        import dsa
        from docreader.generate import generate
        from docreader.provenance import spans_from_weights
        from dsa.longctx import set_context

        lm = self.reader.lm
        model = lm.model
        p = self.reader.prompt(doc, question, None, max_new_tokens)
        factor = set_context(model, len(p.input_ids) + max_new_tokens)
        key = (factor, hash(tuple(p.input_ids[: p.doc_end])))
        cache = self._prefix[1] if self._prefix and self._prefix[0] == key else dsa.new_cache(model)
        self._prefix = None
        cache.crop(p.doc_end)
        cached = cache.get_seq_length()
        probe = DenseAttentionProbe(p.doc_end)
        cfg = model.dsa_state.config
        previous = cfg.mode
        dsa.set_mode(model, "dense")
        try:
            with capturing(model, probe):
                gen = generate(model, lm.tokenizer, p.input_ids, max_new_tokens, cache=cache)
        finally:
            dsa.set_mode(model, previous)
        cache.crop(p.doc_end)
        self._prefix = (key, cache)
        spans = spans_from_weights(probe.weights, probe.rows, p, doc, cfg.sink_tokens, max_spans=max_spans)
        cost = {"prompt_tokens": len(p.input_ids), "document_tokens": len(p.doc_offsets),
                "new_tokens": gen.new_tokens, "prefill_s": round(gen.prefill_s, 3), "decode_s": round(gen.decode_s, 3),
                "cached_prefix_tokens": cached, "rope_factor": factor}
        return gen.text, spans, cost


def ask_document(reader, doc: Document, questions: list[dict], max_new_tokens: int, modes=("sparse", "dense"),
                 max_spans: int = 20) -> list[dict]:
    """Each question asked in each mode; returns one record per question with answers, spans, timings.

    sparse: `Reader.ask` (the CLI's path; spans = the indexer's logged spans). dense: DenseRunner (spans =
    dense attention weights of the question and answer tokens)."""
    recs = [{"question": q["question"], "answers": {}, "spans": {}, "cost": {}} for q in questions]
    dense = DenseRunner(reader)
    for mode in modes:
        for q, rec in zip(questions, recs):
            t0 = time.perf_counter()
            if mode == "dense":
                text, spans, cost = dense.ask(doc, q["question"], max_new_tokens, max_spans)
                rec["spans"]["attn"] = _ranges(spans)
            else:
                ans = reader.ask(doc, q["question"], max_new_tokens=max_new_tokens, dense=False, log=False,
                                 max_spans=max_spans)
                rec["spans"]["dsa"] = _ranges(ans.spans)
                text = ans.text
                cost = {"prompt_tokens": ans.prompt_tokens, "document_tokens": ans.document_tokens,
                        "new_tokens": ans.new_tokens, "prefill_s": ans.timings["prefill_s"],
                        "decode_s": ans.timings["decode_s"], "cached_prefix_tokens": ans.timings["cached_prefix_tokens"],
                        "rope_factor": ans.rope_factor}
            rec["answers"][mode] = text
            rec["cost"][mode] = cost | {"wall_s": round(time.perf_counter() - t0, 3)}
            log(f"  {mode:6s} {cost['prompt_tokens']:5d} tok  prefill {cost['prefill_s']:6.1f}s  decode "
                f"{cost['decode_s']:5.1f}s  {text[:70]!r}")
    return recs


def add_baselines(doc: Document, questions: list[dict], recs: list[dict], embedder: Embedder | None,
                  window_words: int, bounds: list[tuple[int, int]] | None, seed: int, max_spans: int = 20) -> None:
    """Retrieval baselines over fixed windows (inside message bounds for chats)."""
    wins = fixed_windows(doc.text, window_words, bounds=bounds)
    for i, (q, rec) in enumerate(zip(questions, recs)):
        rec["spans"]["bm25"] = [list(r) for r in rank_bm25(q["question"], wins)[:max_spans]]
        if embedder is not None:
            rec["spans"]["embed"] = [list(r) for r in embedder.rank(q["question"], wins, doc.sha256)[:max_spans]]
        rec["spans"]["random"] = [list(r) for r in rank_random(wins, seed + i)[:max_spans]]
        rec["windows"] = len(wins)


def score_provenance(recs: list[dict], golds: list[list[tuple[int, int]]], ks=(1, 3, 5)) -> None:
    """hit@k / MRR / gold coverage@3 / mean span chars for each provenance kind of each record."""
    for rec, gold in zip(recs, golds):
        rec["gold"] = [list(g) for g in gold]
        if not gold:
            continue
        rec["prov"] = {}
        for kind, spans in rec["spans"].items():
            ranked = [tuple(s) for s in spans]
            m = {f"hit@{k}": M.hit_at_k(ranked, gold, k) for k in ks}
            m["mrr"] = M.mrr(ranked, gold)
            m["cover@3"] = M.gold_coverage(ranked, gold, 3)
            m["chars@3"] = sum(e - s for s, e in ranked[:3]) / max(1, len(ranked[:3]))
            rec["prov"][kind] = m


def summarize_provenance(recs: list[dict], ks=(1, 3, 5)) -> dict:
    out = {}
    for kind in PROVENANCE:
        rows = [r["prov"][kind] for r in recs if "prov" in r and kind in r["prov"]]
        if not rows:
            continue
        out[kind] = {"n": len(rows), **{f"hit@{k}": M.mean(r[f"hit@{k}"] for r in rows) for k in ks},
                     "mrr": M.mean(r["mrr"] for r in rows), "cover@3": M.mean(r["cover@3"] for r in rows),
                     "chars@3": M.mean(r["chars@3"] for r in rows)}
    return out


def summarize_cost(recs: list[dict]) -> dict:
    out = {}
    for mode in ("sparse", "dense"):
        rows = [r["cost"][mode] for r in recs if mode in r.get("cost", {})]
        if not rows:
            continue
        out[mode] = {"questions": len(rows),
                     "prompt_tokens_mean": M.mean(r["prompt_tokens"] for r in rows),
                     "prefill_s": sum(r["prefill_s"] for r in rows),
                     "prefill_s_uncached": sum(r["prefill_s"] for r in rows if r["cached_prefix_tokens"] == 0),
                     "docs_prefilled": sum(1 for r in rows if r["cached_prefix_tokens"] == 0),
                     "decode_s": sum(r["decode_s"] for r in rows),
                     "new_tokens": sum(r["new_tokens"] for r in rows)}
        d = out[mode]
        d["decode_tok_per_s"] = d["new_tokens"] / d["decode_s"] if d["decode_s"] else None
        d["prefill_tok_per_s"] = (sum(r["prompt_tokens"] for r in rows if r["cached_prefix_tokens"] == 0)
                                  / d["prefill_s_uncached"]) if d["prefill_s_uncached"] else None
    return out
