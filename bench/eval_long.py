"""Long-context evaluation (issue 16): needle retrieval, indexer recall and NLL by position, 16k-256k tokens.

    python -m bench.eval_long --gguf-dir G --gguf-file F --adapter DIR [--indexer DIR] --device cuda \\
        --books held_out.jsonl.xz --lengths 16384,32768,65536,131072,262144 --compare-base \\
        --time-budget 480 --out long_eval.json
    python -m bench.eval_long --extract-books held_out.jsonl.xz     # the held-out books alone (to carry)

Only held-out books are read (bench.eval_data.held_out: sha1(name) % 10 == 0, never trained on); a
document longer than one book is several held-out books joined, from a seeded start. The model is the
base (`--gguf-dir/--gguf-file` or `--model`) with the LoRA delta `--adapter` merged (its fixed RoPE), or
without one the base with YaRN per length (dsa.longctx.set_context); the indexer is `--indexer` (default:
the adapter's directory when it holds one, else the shipped indexer). Everything runs in DSA sparse mode.

1. needle: per length x depth one haystack (bench.eval_needle: a passkey and a key-value needle at the
   depth of book text), the app's prompt (docreader.prompt.build) and its greedy decoding
   (docreader.generate, <= --max-new-tokens); both questions share the prompt up to the question, which is
   prefilled once (exactly length - PREFIX_ROOM tokens, so GPU shapes repeat per length). Correct = the
   expected number appears in the answer.
2. recall: attention-mass recall of the DSA selection against the oracle top-|S| keys (same budget), on
   --recall-queries query positions spread over [budget, L) per layer (bench.indexer_eval's functions).
   Targets: mean >= 0.95, p5 >= 0.85.
3. ppl: next-token NLL by position bucket ([0,2k), [2k,4k), ... [128k,256k)) over --ppl-windows windows of
   --ppl-length tokens (default: the longest length), and the mean NLL of --short-windows 2,048-token
   windows. Logits are computed in 4,096-token chunks. Targets: 64k-128k no worse than 4k-8k; at 2k within
   2% of the base model.

--compare-base also runs ppl (and needle at --base-needle-lengths) for the base model without the delta,
with per-length YaRN and --base-indexer (default: the shipped one), in the same process. Work is ordered
needle, recall, ppl (short windows first; each window adapted then base), base needle; the JSON is rewritten
after every item (an interrupted run leaves everything done so far), items past --time-budget are recorded
as skipped, progress goes to stderr and markdown tables to stdout (and beside the JSON as .md).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import lzma
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dsa  # noqa: E402
from bench import eval_metrics as M  # noqa: E402
from bench.eval_data import data_files, held_out, iter_rows  # noqa: E402
from bench.eval_needle import haystack  # noqa: E402
from bench.indexer_eval import oracle_recall, recall_of, stats, true_attention  # noqa: E402
from docreader.document import Document  # noqa: E402
from docreader.generate import generate  # noqa: E402
from docreader.prompt import build, tokenize_document  # noqa: E402
from dsa.longctx import fixed_window, set_context  # noqa: E402
from dsa.longtrain import position_nll  # noqa: E402
from dsa.patch import decoder_layers  # noqa: E402
from dsa.train import capture, layer_scale, load_model  # noqa: E402

DEFAULT_BOOKS = ROOT.parent / "shared" / "data" / "books" / "train.jsonl.xz"
BUCKETS = (0, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)
PREFIX_ROOM = 64  # prompt tokens after the shared prefix: question, generation prompt and answer fit in it
PARTS = ("needle", "recall", "ppl")


def log(msg: str) -> None:
    print(f"[eval_long {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- held-out books --------------------------------------------------------------------------------


def held_out_books(paths) -> list[dict]:
    """Every held-out book ({"name", "text"}) in the given files/directories, in a fixed order (sha1 of
    the name); books of the training split are never returned."""
    books = [row for _, row in iter_rows(data_files(list(paths)), {"book"})
             if isinstance(row.get("name"), str) and held_out(row["name"])]
    books.sort(key=lambda r: hashlib.sha1(r["name"].encode("utf-8")).hexdigest())
    if not books:
        raise SystemExit(f"{', '.join(map(str, paths))}: no held-out books (sha1(name) % 10 == 0)")
    return books


def write_books(books: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for b in books:
            f.write(json.dumps({"name": b["name"], "text": b["text"]}, ensure_ascii=False) + "\n")
    return path


class Corpus:
    """Held-out book text for documents longer than one book: books joined in their fixed order from a
    seeded start, wrapping around (a book repeats only when all of them are shorter than asked for)."""

    SEP = "\n\n"

    def __init__(self, books: list[dict]):
        if any(not held_out(b["name"]) for b in books):
            raise ValueError("Corpus takes held-out books only")
        self.books = books

    def text(self, rng: random.Random, min_chars: int) -> tuple[str, list[str]]:
        i = rng.randrange(len(self.books))
        parts, names, n = [], [], 0
        while n < min_chars:
            b = self.books[i % len(self.books)]
            parts.append(b["text"])
            names.append(b["name"])
            n += len(b["text"]) + len(self.SEP)
            i += 1
        return self.SEP.join(parts), names

    def tokens(self, tokenizer, rng: random.Random, n: int) -> tuple[list[int], list[str]]:
        """n tokens of joined book text from a seeded offset inside the first book."""
        chars = 5 * n + 20_000
        while True:
            text, names = self.text(rng, 2 * chars)
            start = rng.randrange(len(text) - chars) if len(text) > chars else 0
            ids = tokenizer(text[start:start + chars], add_special_tokens=False)["input_ids"]
            if len(ids) >= n:
                return ids[:n], names
            chars *= 2


# -- scoring and bucketing -----------------------------------------------------------------------------


def correct(answer: str, value: str) -> bool:
    return M.contains_value(answer, value)


def bucket_edges(L: int, edges=BUCKETS) -> list[int]:
    """The bucket edges that a window of L tokens reaches: its L - 1 predictions (index i predicts token
    i + 1) split at `edges`, the last bucket cut at L - 1."""
    n = L - 1
    out = [e for e in edges if e < n]
    return out + [n] if out else []


def bucket_label(a: int, b: int) -> str:
    k = lambda x: f"{x // 1024}k" if x and x % 1024 == 0 else str(x)  # noqa: E731
    return f"[{k(a)},{k(b)})"


def pool_buckets(windows: list[dict]) -> list[dict]:
    """Per-window bucket means ({"edges", "nll"}) -> per nominal bucket of BUCKETS: the token-weighted mean
    NLL over windows and the number of predictions."""
    acc: dict[int, list[float]] = {}
    for w in windows:
        e = w["edges"]
        for a, b, v in zip(e[:-1], e[1:], w["nll"]):
            if v is None or not math.isfinite(v) or b <= a:
                continue
            s = acc.setdefault(a, [0.0, 0])
            s[0] += v * (b - a)
            s[1] += b - a
    out = []
    for a, b in zip(BUCKETS[:-1], BUCKETS[1:]):
        if a in acc:
            out.append({"bucket": bucket_label(a, b), "start": a, "end": b, "n": acc[a][1],
                        "nll": acc[a][0] / acc[a][1]})
    return out


def needle_summary(items: list[dict]) -> dict:
    """label -> "length|depth" -> {"n", "correct", "acc"} (and "length|all")."""
    out: dict = {}
    for it in items:
        if it.get("part") != "needle" or it.get("status") != "done":
            continue
        for depth in (str(it["depth"]), "all"):
            cell = out.setdefault(it["model"], {}).setdefault(f"{it['length']}|{depth}", {"n": 0, "correct": 0})
            for a in it["answers"]:
                cell["n"] += 1
                cell["correct"] += int(a["correct"])
    for cells in out.values():
        for c in cells.values():
            c["acc"] = c["correct"] / c["n"] if c["n"] else None
    return out


def recall_summary(items: list[dict]) -> dict:
    """label -> length -> {"trained": stats, "oracle": stats, "per_layer": [...]}, over queries, documents
    and layers."""
    rows: dict = {}
    for it in items:
        if it.get("part") != "recall" or it.get("status") != "done":
            continue
        r = rows.setdefault(it["model"], {}).setdefault(str(it["length"]), {})
        for layer, d in it["layers"].items():
            lr = r.setdefault(int(layer), {"trained": [], "oracle": []})
            lr["trained"] += d["trained"]
            lr["oracle"] += d["oracle"]
    out: dict = {}
    for label, by_len in rows.items():
        for L, layers in by_len.items():
            allt = np.concatenate([np.asarray(v["trained"]) for v in layers.values()])
            allo = np.concatenate([np.asarray(v["oracle"]) for v in layers.values()])
            out.setdefault(label, {})[L] = {
                "trained": stats(allt), "oracle": stats(allo),
                "per_layer": [{"layer": li, "trained": stats(np.asarray(v["trained"])),
                               "oracle": stats(np.asarray(v["oracle"]))} for li, v in sorted(layers.items())]}
    return out


def ppl_summary(items: list[dict]) -> dict:
    """label -> {"buckets": pooled buckets, "short": {"nll", "ppl", "n_windows"}}."""
    out: dict = {}
    for label in sorted({it["model"] for it in items if it.get("part") in ("ppl", "ppl_short")}):
        long = [it for it in items if it.get("part") == "ppl" and it["model"] == label and it.get("status") == "done"]
        short = [it for it in items if it.get("part") == "ppl_short" and it["model"] == label
                 and it.get("status") == "done"]
        d: dict = {"buckets": pool_buckets(long), "windows": len(long)}
        if short:
            v = float(np.mean([it["nll"] for it in short]))
            d["short"] = {"nll": v, "ppl": math.exp(v), "n_windows": len(short), "length": short[0]["length"]}
        out[label] = d
    return out


# -- models ----------------------------------------------------------------------------------------


def indexer_dir(explicit: str | None, adapter: str | None, model) -> Path | None:
    if explicit:
        return Path(explicit)
    if adapter and (Path(adapter) / "indexer.safetensors").exists():
        return Path(adapter)
    return dsa.find_shipped(model.config)


def prepare(model, adapter: str | None, indexer: Path | None) -> dict:
    """Merge the delta (if any), attach DSA with the indexer's config and weights; -> what was loaded."""
    info: dict = {"adapter": adapter, "indexer": str(indexer) if indexer else None}
    if adapter:
        lcfg = dsa.load_adapter(model, adapter)
        info.update(rope=lcfg.rope, max_positions=lcfg.max_positions)
    cfg = dsa.DSAConfig.load(indexer / "dsa_config.json") if indexer else dsa.DSAConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # an untrained fallback is the same every run
        dsa.attach(model, cfg)
    if indexer:
        dsa.load_indexer(model, indexer)
    else:
        log("warning: no trained indexer; selections come from a random-init one")
    dsa.set_mode(model, "sparse")
    info["dsa"] = cfg.to_dict()
    info["fixed_window"] = fixed_window(model)
    return info


def load_tokenizer(args):
    from transformers import AutoTokenizer

    if args.model:
        return AutoTokenizer.from_pretrained(args.model)
    return AutoTokenizer.from_pretrained(args.gguf_dir, gguf_file=args.gguf_file)


@contextlib.contextmanager
def flex_off():
    """Short prefills (a question after a cached prefix) take the PyTorch path: FlexAttention is compiled per
    shape, and every question would be a new one."""
    prev = os.environ.get("DSA_FLEX")
    os.environ["DSA_FLEX"] = "0"
    try:
        yield
    finally:
        if prev is None:
            os.environ.pop("DSA_FLEX", None)
        else:
            os.environ["DSA_FLEX"] = prev


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


# -- parts ---------------------------------------------------------------------------------------------


def needle_case(tokenizer, corpus: Corpus, length: int, depth: float, seed: int, max_new: int) -> dict:
    """The haystack for (length, depth): the shared prompt prefix of exactly length - PREFIX_ROOM tokens
    (system, document with both needles, up to the question) and each needle's full prompt."""
    rng = random.Random(f"{seed}-needle-{length}-{depth}")
    name = f"haystack-{length}-{int(round(depth * 100))}"
    P = length - PREFIX_ROOM
    q0 = "What is the pass key? Answer with the number only."
    stub = build(tokenizer, Document(f"{name}.md", "md", "", [], {}), q0, window=10 * length, max_new_tokens=0,
                 doc_tokens=([], []))
    n_doc = P - stub.question_span[0]  # the template's tokens around the document do not depend on it
    if n_doc < 64:
        raise ValueError(f"length {length}: too short for a haystack")
    slack = 32
    while True:
        text, books = corpus.text(rng, 12 * (n_doc + slack) + 4096)
        doc, ns = haystack(text, tokenizer, n_doc + slack, depth, rng, name)
        ids, offs = tokenize_document(tokenizer, doc.text)
        if len(ids) >= n_doc:
            break
        slack *= 8
    # needle tokens [t0, t1); cut the surplus on the side away from the needles
    t0 = next(i for i, (s, e) in enumerate(offs) if e > ns[0]["range"][0])
    t1 = next(i for i, (s, e) in enumerate(offs) if e >= ns[-1]["range"][1]) + 1
    cut = len(ids) - n_doc
    if depth < 0.5:
        ids, offs = ids[:n_doc], offs[:n_doc]
    else:
        ids, offs = ids[cut:], offs[cut:]
        t0, t1 = t0 - cut, t1 - cut
    if t0 < 0 or t1 > n_doc:
        raise RuntimeError(f"needle cut off at length {length}, depth {depth}")
    prompts = [build(tokenizer, doc, n["question"], window=length, max_new_tokens=max_new, doc_tokens=(ids, offs))
               for n in ns]
    prefix = prompts[0].input_ids[:P]
    for p in prompts:
        if p.input_ids[:P] != prefix or p.question_span[0] != P:
            raise RuntimeError("the needle prompts do not share the prefix")
    return {"prefix": prefix, "prompts": [p.input_ids for p in prompts], "needles": ns, "books": books,
            "doc_start": prompts[0].doc_start, "needle_tokens": [t0, t1], "doc_tokens": n_doc}


@torch.inference_mode()
def run_needle(model, tokenizer, case: dict, length: int, max_new: int) -> dict:
    dev = next(model.parameters()).device
    factor = set_context(model, max(map(len, case["prompts"])) + max_new)  # as the app does
    dsa.take_paths(model)
    cache = dsa.new_cache(model)
    P = len(case["prefix"])
    sync(dev)
    t = time.perf_counter()
    model(torch.tensor([case["prefix"]], device=dev), **dsa.cache_arg(cache), use_cache=True, logits_to_keep=1)
    sync(dev)
    prefill = time.perf_counter() - t
    answers = []
    for n, ids in zip(case["needles"], case["prompts"]):
        t = time.perf_counter()
        rest = ids[P:-1]  # the question, prefilled here; generate() prefills the last token and decodes
        if rest:
            with flex_off():
                model(torch.tensor([rest], device=dev), **dsa.cache_arg(cache), use_cache=True, logits_to_keep=1)
        gen = generate(model, tokenizer, ids, max_new, cache=cache)
        cache.crop(P)
        answers.append({"needle": n["kind"], "value": n["value"], "answer": gen.text,
                        "correct": correct(gen.text, n["value"]), "prompt_tokens": len(ids),
                        "new_tokens": gen.new_tokens, "seconds": round(time.perf_counter() - t, 3)})
    del cache
    return {"answers": answers, "prefix_tokens": P, "prefill_s": round(prefill, 3), "rope_factor": factor,
            "paths": dsa.take_paths(model),
            "books": case["books"], "needle_tokens": case["needle_tokens"],
            "needle_depth_tokens": round(case["needle_tokens"][0] / case["doc_tokens"], 4)}


def recall_once(model, ids: list[int], queries: int, fp32_indexers: dict) -> dict:
    """Per sparse layer: recall of the selection and of the oracle at the same budget, for `queries`
    positions spread over [budget, L)."""
    cfg = model.dsa_state.config
    dev = next(model.parameters()).device
    layers = decoder_layers(model)
    L = len(ids)
    set_context(model, L)
    store = capture(model, torch.tensor([ids], device=dev))
    qpos = torch.linspace(min(cfg.budget, L - 1), L - 1, queries, device=dev).round().long().unique()
    out = {}
    with torch.no_grad():
        for li, (x, q, k) in sorted(store.items()):
            p = true_attention(q, k, qpos, layer_scale(layers[li], q.shape[-1]))
            rt, size = recall_of(fp32_indexers[li], x, p, qpos, cfg)
            ro = oracle_recall(p, size)
            out[str(li)] = {"trained": [round(float(v), 5) for v in rt.cpu()],
                            "oracle": [round(float(v), 5) for v in ro.cpu()]}
            del p
    del store
    return {"layers": out, "queries": int(qpos.numel())}


def fp32_indexers(model) -> dict:
    return {i: copy.deepcopy(layer.self_attn.indexer).float() for i, layer in enumerate(decoder_layers(model))
            if hasattr(layer.self_attn, "indexer")}


@torch.inference_mode()
def window_nll(model, ids: list[int]) -> dict:
    """NLL of one window in sparse mode by position bucket (dsa.longtrain.position_nll: vocabulary in
    4,096-token chunks, never [L, vocab] at once)."""
    dev = next(model.parameters()).device
    L = len(ids)
    factor = set_context(model, L)
    edges = bucket_edges(L)
    dsa.take_paths(model)
    nll = position_nll(model, torch.tensor([ids], device=dev), edges)
    return {"edges": edges, "nll": [float(v) for v in nll], "rope_factor": factor, "paths": dsa.take_paths(model)}


# -- the run -------------------------------------------------------------------------------------------


class Run:
    """Items in order, each timed and written out at once; past the budget, items are recorded as skipped."""

    def __init__(self, out: dict, path: Path, budget: float | None):
        self.out, self.path, self.budget = out, path, budget
        self.t0 = time.perf_counter()
        self.took: dict = {}  # kind -> seconds of the last such item

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def item(self, kind: tuple, record: dict, fn) -> dict:
        el = self.elapsed()
        guess = self.took.get(kind, 0.0)
        if self.budget is not None and el + guess > self.budget:
            record |= {"status": "skipped", "reason": f"time budget {self.budget:.0f}s: {el:.0f}s elapsed"
                       + (f", a like item took {guess:.0f}s" if guess else "")}
            log(f"skip {record_name(record)}: {record['reason']}")
        else:
            t = time.perf_counter()
            cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            try:
                record |= fn() | {"status": "done"}
            except Exception as e:  # one failing item (e.g. out of memory) must not lose the others
                record |= {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000]}
                log(f"ERROR {record_name(record)}: {record['error']}\n{traceback.format_exc()}")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            record["seconds"] = round(time.perf_counter() - t, 2)
            if cuda:
                record["peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            self.took[kind] = record["seconds"]
            log(f"{record_name(record)}: {record['status']} in {record['seconds']:.1f}s ({self.elapsed():.0f}s total)"
                + (f" {summary_line(record)}" if record["status"] == "done" else ""))
        self.out["items"].append(record)
        self.save()
        return record

    def save(self) -> None:
        self.out["elapsed_s"] = round(self.elapsed(), 1)
        self.out["summary"] = summarize(self.out["items"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.out, indent=1) + "\n")
        tmp.replace(self.path)
        self.path.with_suffix(".md").write_text(markdown(self.out) + "\n")


def record_name(r: dict) -> str:
    extra = f" depth={r['depth']}" if "depth" in r else f" #{r['index']}" if "index" in r else ""
    return f"{r['part']} {r['model']} L={r['length']}{extra}"


def summary_line(r: dict) -> str:
    if r["part"] == "needle":
        return " ".join(f"{a['needle']}={a['answer'][:24]!r}{'+' if a['correct'] else '-'}" for a in r["answers"]) \
            + f" prefill {r['prefill_s']}s"
    if r["part"] == "recall":
        t = np.concatenate([v["trained"] for v in r["layers"].values()])
        return f"recall mean {t.mean():.3f} p5 {np.percentile(t, 5):.3f}"
    if r["part"] == "ppl":
        return "nll " + " ".join(f"{v:.2f}" for v in r["nll"])
    if r["part"] == "ppl_short":
        return f"nll {r['nll']:.3f}"
    return ""


def summarize(items: list[dict]) -> dict:
    status: dict = {}
    for it in items:
        status[it.get("status", "?")] = status.get(it.get("status", "?"), 0) + 1
    return {"needle": needle_summary(items), "recall": recall_summary(items), "ppl": ppl_summary(items),
            "status": status}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf-dir")
    ap.add_argument("--gguf-file")
    ap.add_argument("--model", help="a Hugging Face model directory (instead of --gguf-dir/--gguf-file)")
    ap.add_argument("--adapter", help="LoRA delta directory (dsa.lora); none: the base with YaRN per length")
    ap.add_argument("--indexer", help="indexer weights (default: the adapter's directory if it holds one, else shipped)")
    ap.add_argument("--base-indexer", help="indexer of the base model for --compare-base (default: shipped)")
    ap.add_argument("--books", nargs="+", default=[str(DEFAULT_BOOKS)],
                    help="books .jsonl[.xz] files or directories ({name, text}); held-out ones only are used")
    ap.add_argument("--extract-books", metavar="OUT", help="write the held-out books of --books to OUT and exit")
    ap.add_argument("--max-books", type=int, default=None, help="only the first N held-out books (sha1 order)")
    ap.add_argument("--parts", default="needle,recall,ppl")
    ap.add_argument("--lengths", default="16384,32768,65536,131072,262144", help="needle lengths (prompt tokens)")
    ap.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--recall-lengths", default="32768,131072")
    ap.add_argument("--recall-queries", type=int, default=128, help="query positions per document and layer")
    ap.add_argument("--recall-docs", type=int, default=1, help="documents per recall length")
    ap.add_argument("--ppl-length", type=int, default=None, help="tokens per NLL window (default: longest --lengths)")
    ap.add_argument("--ppl-windows", type=int, default=1)
    ap.add_argument("--short-length", type=int, default=2048)
    ap.add_argument("--short-windows", type=int, default=8)
    ap.add_argument("--compare-base", action="store_true", help="also the base model without the delta")
    ap.add_argument("--base-needle-lengths", default="", help="needle lengths for the base model (default: none)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="default: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=None, help="seconds; later items are skipped")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_long.json"))
    args = ap.parse_args(argv)
    if not args.extract_books and not args.model and not (args.gguf_dir and args.gguf_file):
        ap.error("give --model DIR or --gguf-dir DIR --gguf-file NAME")
    bad = set(args.parts.split(",")) - set(PARTS)
    if bad:
        ap.error(f"--parts: unknown {sorted(bad)} (known: {', '.join(PARTS)})")
    return args


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.extract_books:
        books = held_out_books(args.books)[: args.max_books]
        log(f"{len(books)} held-out books -> {write_books(books, args.extract_books)}")
        return 0
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device(args.device)
    if dev.type == "cuda":  # FlexAttention compiles per shape (2 per length): never fall back to eager, O(L^2)
        for key, value in (("recompile_limit", 64), ("cache_size_limit", 64), ("accumulated_recompile_limit", 4096)):
            with contextlib.suppress(Exception):
                setattr(torch._dynamo.config, key, value)
    parts = args.parts.split(",")
    lengths, depths = ints(args.lengths), [float(x) for x in args.depths.split(",")]
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if dev.type == "cuda" else "fp32")]

    corpus = Corpus(held_out_books(args.books)[: args.max_books])
    log(f"{len(corpus.books)} held-out books ({sum(len(b['text']) for b in corpus.books) / 1e6:.1f} M chars)")
    tokenizer = load_tokenizer(args)
    model = load_model(args.model, args.gguf_dir, args.gguf_file, args.device, dtype)
    base = copy.deepcopy(model) if args.compare_base and args.adapter else None
    label = "adapted" if args.adapter else "base"
    models = {label: model}
    info = {label: prepare(model, args.adapter, indexer_dir(args.indexer, args.adapter, model))}
    if base is not None:
        models["base"] = base
        info["base"] = prepare(base, None, indexer_dir(args.base_indexer, None, base))
    log(f"models ready in {time.perf_counter() - t_start:.1f}s: " + ", ".join(
        f"{k} (adapter {v['adapter']}, indexer {v['indexer']})" for k, v in info.items()))

    out = {"args": vars(args), "models": info, "device": str(dev), "dtype": str(dtype).split(".")[-1],
           "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
           "books": [b["name"] for b in corpus.books], "buckets": list(BUCKETS), "prefix_room": PREFIX_ROOM,
           "items": []}
    run = Run(out, Path(args.out), args.time_budget)
    run.save()

    def needles(lbl: str, lens: list[int]) -> None:
        m = models[lbl]
        for L in lens:
            for depth in depths:
                def go(L=L, depth=depth):
                    case = needle_case(tokenizer, corpus, L, depth, args.seed, args.max_new_tokens)
                    return run_needle(m, tokenizer, case, L, args.max_new_tokens)
                run.item(("needle", lbl, L), {"part": "needle", "model": lbl, "length": L, "depth": depth}, go)

    if "needle" in parts:
        needles(label, lengths)
    if "recall" in parts:
        idx32 = fp32_indexers(model)
        for L in ints(args.recall_lengths):
            for i in range(args.recall_docs):
                def go(L=L, i=i):
                    ids, names = corpus.tokens(tokenizer, random.Random(f"{args.seed}-recall-{L}-{i}"), L)
                    return recall_once(model, ids, args.recall_queries, idx32) | {"books": names}
                run.item(("recall", label, L), {"part": "recall", "model": label, "length": L, "index": i}, go)
    if "ppl" in parts:
        short, Lp = args.short_length, args.ppl_length or max(lengths)
        for i in range(args.short_windows):
            ids, names = corpus.tokens(tokenizer, random.Random(f"{args.seed}-short-{i}"), short)
            for lbl, m in models.items():
                def go(m=m, ids=ids, names=names):
                    r = window_nll(m, ids)
                    return {"nll": r["nll"][0] if len(r["nll"]) == 1 else
                            float(np.average(r["nll"], weights=np.diff(r["edges"]))), "books": names}
                run.item(("ppl_short", lbl), {"part": "ppl_short", "model": lbl, "length": short, "index": i}, go)
        for i in range(args.ppl_windows):
            ids, names = corpus.tokens(tokenizer, random.Random(f"{args.seed}-ppl-{Lp}-{i}"), Lp)
            for lbl, m in models.items():
                run.item(("ppl", lbl, Lp), {"part": "ppl", "model": lbl, "length": Lp, "index": i},
                         lambda m=m, ids=ids, names=names: window_nll(m, ids) | {"books": names})
    if "needle" in parts and "base" in models and label != "base" and args.base_needle_lengths:
        needles("base", ints(args.base_needle_lengths))

    run.save()
    log(f"done in {time.perf_counter() - t_start:.0f}s -> {args.out}")
    print(markdown(out))
    return 0


# -- report ----------------------------------------------------------------------------------------


def _f(x, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def markdown(out: dict) -> str:
    s = out.get("summary") or summarize(out["items"])
    lines = []
    for label, cells in s["needle"].items():
        lens = sorted({int(k.split("|")[0]) for k in cells})
        deps = [d for d in dict.fromkeys(str(float(x)) for x in out["args"]["depths"].split(","))]
        lines += [f"Needle ({label}, sparse): correct answers / asked (passkey + key-value) per length x depth", "",
                  "| length | " + " | ".join(f"depth {d}" for d in deps) + " | all |",
                  "|---|" + "---|" * (len(deps) + 1)]
        for L in lens:
            row = [cells.get(f"{L}|{d}") for d in deps] + [cells.get(f"{L}|all")]
            lines.append(f"| {L:,} | " + " | ".join("-" if c is None else f"{c['correct']}/{c['n']}" for c in row) + " |")
        lines.append("")
    for label, by_len in s["recall"].items():
        lines += [f"Attention-mass recall of the DSA selection ({label}; mean / p5 over queries x layers x docs; "
                  "targets mean >= 0.95, p5 >= 0.85)", "",
                  "| L | n | mean | p5 | oracle mean | oracle p5 | worst layer (mean) |", "|---|---|---|---|---|---|---|"]
        for L, r in sorted(by_len.items(), key=lambda kv: int(kv[0])):
            worst = min(r["per_layer"], key=lambda x: x["trained"]["mean"])
            lines.append(f"| {int(L):,} | {r['trained']['n']} | {_f(r['trained']['mean'])} | {_f(r['trained']['p5'])} "
                         f"| {_f(r['oracle']['mean'])} | {_f(r['oracle']['p5'])} "
                         f"| {worst['layer']}: {_f(worst['trained']['mean'])} |")
        lines.append("")
    ppl = s["ppl"]
    if ppl:
        labels = list(ppl)
        lines += ["Next-token NLL (nats) by position, sparse mode" + (" (Δ: ppl vs base)" if "base" in ppl and len(labels) > 1 else ""), "",
                  "| positions | n | " + " | ".join(f"{lb} NLL" for lb in labels) + (" | Δppl |" if len(labels) > 1 and "base" in ppl else " |"),
                  "|---|---|" + "---|" * len(labels) + ("---|" if len(labels) > 1 and "base" in ppl else "")]
        rows = [(b["bucket"], b["n"]) for b in max((ppl[lb]["buckets"] for lb in labels), key=len)]
        for bucket, n in rows:
            vals = {lb: next((b["nll"] for b in ppl[lb]["buckets"] if b["bucket"] == bucket), None) for lb in labels}
            lines.append(f"| {bucket} | {n:,} | " + " | ".join(_f(vals[lb]) for lb in labels)
                         + (f" | {_delta(vals, labels)} |" if len(labels) > 1 and "base" in ppl else " |"))
        sh = {lb: ppl[lb].get("short", {}).get("nll") for lb in labels}
        if any(v is not None for v in sh.values()):
            n = next(ppl[lb]["short"] for lb in labels if "short" in ppl[lb])
            lines.append(f"| {n['n_windows']} windows of {n['length']:,} | - | " + " | ".join(_f(sh[lb]) for lb in labels)
                         + (f" | {_delta(sh, labels)} |" if len(labels) > 1 and "base" in ppl else " |"))
        lines += ["", *targets(ppl)]
    st = s["status"]
    lines.append(f"Items: {', '.join(f'{v} {k}' for k, v in sorted(st.items()))}; {out.get('elapsed_s', 0):.0f} s.")
    return "\n".join(lines)


def _delta(vals: dict, labels: list[str]) -> str:
    other = next((lb for lb in labels if lb != "base"), None)
    a, b = vals.get(other), vals.get("base")
    return "-" if a is None or b is None else f"{100 * (math.exp(a - b) - 1):+.1f}%"


def targets(ppl: dict) -> list[str]:
    """The issue's ppl targets, checked where the data is there."""
    out = []
    for label, d in ppl.items():
        by = {b["start"]: b["nll"] for b in d["buckets"]}
        if 65536 in by and 4096 in by:
            ok = by[65536] <= by[4096]
            out.append(f"- {label}: NLL at 64k-128k {by[65536]:.3f} vs 4k-8k {by[4096]:.3f}: "
                       f"{'met' if ok else 'NOT met'} (target: no worse)")
    if "base" in ppl and len(ppl) > 1:
        other = next(lb for lb in ppl if lb != "base")
        a, b = ppl[other].get("short"), ppl["base"].get("short")
        if a and b:
            r = a["ppl"] / b["ppl"] - 1
            out.append(f"- {other} vs base at {a['length']:,}-token windows: ppl {a['ppl']:.3f} vs {b['ppl']:.3f} "
                       f"({100 * r:+.2f}%): {'met' if r <= 0.02 else 'NOT met'} (target: within 2%)")
    return out + ([""] if out else [])


if __name__ == "__main__":
    sys.exit(main())
