"""Long-context training windows for the YaRN context extension (8k -> 256k) of the default model.

    python -m bench.make_long_data --data ../shared/data \\
        --tokenizer ~/.cache/docreader/models/smollm2-135m-instruct \\
        --lengths 16384,65536 --windows 120,30 --out DIR [--seed 0] [--synthetic 0.5] [--prompted 0.4]

Output format (numpy only; `load_windows` below is a complete loader, it needs nothing from docreader):
  DIR/windows_{L}.npz   np.savez_compressed, one file per length L, windows shuffled:
      tokens  uint16 [N, L]  token ids (the model's tokenizer; its vocabulary must fit uint16)
      answer  uint8  [N, L]  1 on the assistant's answer tokens, the closing end-of-turn token (<|im_end|>)
                             included, 0 elsewhere; all 0 in natural windows. answer[i, t] == 1 means token t
                             is supervised: the logits at t-1 should predict tokens[i, t]. In a synthetic
                             window the answer is the last tokens of the window.
      kind    uint8  [N]     0 natural book text, 1 natural app prompt (contracts/meetings), 2 synthetic retrieval
  DIR/tasks_{L}.json    one record per synthetic window: row (index in the npz), variant, question, answer,
                        values, needle sentences, needle depths (start token / document tokens), documents
  DIR/meta.json         arguments, split rule, training documents used (count, sha256, names), counts per kind
                        and task variant, tokens, file sizes, bytes per million tokens, build seconds
  A trainer may take plain LM loss on every token of kinds 0 and 1, and on kind 2 the loss on the answer
  tokens (the haystack is book text the other windows already teach).

Kinds of window (exactly L tokens each):
  0 book text: a random L-token span (at a line start) of one book, or of several whole books joined by
    blank lines when one is too short (bench/make_indexer_data.book_windows over the joined text).
  1 app prompt: contracts (CUAD) or meetings (QMSum, one turn a line) joined by blank lines into one long
    document, in docreader's prompt (system prompt + prompts/ask.txt via the chat template, the Renderer of
    bench/make_indexer_data) with one of the first document's questions; the document is cut so that the
    prompt, generation prompt included, ends exactly at L. The model sees its real prompt at long lengths.
  2 synthetic retrieval (fraction --synthetic): the same app prompt around book text with needle sentences
    at sentence boundaries and uniform random depths, the question about them, and the assistant's answer
    closed by <|im_end|>. Tasks, wordings and vocabularies are in bench/long_tasks.py; they share no
    phrasing, key word or city with bench/eval_needle.py, so that the needle evaluation measures
    generalisation rather than a trained sentence.

Split: every document with make_indexer_data.held_out(name, 10) true (sha1 of the name, the split of
bench/eval_data.held_out used by the evaluation) is left out; meta.json records the rule and the names used.
Deterministic for a seed (each length has its own random.Random(f"{seed}-{L}")).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bench import long_tasks as T
from bench.make_indexer_data import (FILES, SENTINEL, Renderer, book_windows, doc_questions, doc_text, held_out,
                                     read_jsonl)

HELD_OUT_MOD = 10
SPLIT_RULE = "excluded: int(sha1(name)[:8], 16) % 10 == 0 (bench.make_indexer_data.held_out(name, 10), " \
             "the evaluation's split in bench.eval_data.held_out)"
KIND_NAMES = ("book", "prompt", "synthetic")
BOOK_CHARS_PER_TOKEN = 5.2  # books tokenise at ~4.5 characters a token: a margin, topped up when short


def load_windows(path: str | Path) -> dict[str, np.ndarray]:
    """tokens uint16 [N, L], answer uint8 [N, L], kind uint8 [N] of one windows_{L}.npz (numpy only)."""
    with np.load(path) as z:
        return {k: z[k] for k in ("tokens", "answer", "kind")}


@dataclass
class Corpus:
    """Training-split rows per kind ("books", "contracts", "meetings") and how many were held out."""

    rows: dict[str, list[dict]]
    held: dict[str, int]
    chars: dict[str, int]  # characters of document text per kind: how kind-1 windows share contracts/meetings


def load_corpus(data: Path) -> Corpus:
    rows, held, chars = {}, {}, {}
    for kind, rel in FILES.items():
        every = list(read_jsonl(data / rel))
        rows[kind] = [r for r in every if not held_out(r["name"], HELD_OUT_MOD)]
        held[kind] = len(every) - len(rows[kind])
        if not rows[kind]:
            raise SystemExit(f"{data / rel}: no training documents")
        chars[kind] = sum(len(doc_text(kind, r)) for r in rows[kind])
    return Corpus(rows, held, chars)


def uint16_tokenizer(path: str):
    """The tokenizer of a model dir, checked to fit the windows' uint16 token ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(Path(path).expanduser()))
    if len(tok) > 65536:
        raise SystemExit(f"vocabulary of {len(tok)} does not fit uint16")
    return tok


def end_of_turn(tok) -> int:
    """The chat template's end-of-turn token id (what closes an assistant message: <|im_end|> for SmolLM2)."""
    msgs = [{"role": "user", "content": "?"}, {"role": "assistant", "content": SENTINEL}]
    tail = tok.apply_chat_template(msgs, tokenize=False).split(SENTINEL)[1].strip()
    return tok(tail, add_special_tokens=False)["input_ids"][0]


def gather(rows: list[dict], text_of: Callable[[dict], str], rng: random.Random, min_chars: int,
           random_start: bool = False, cut: bool = True) -> tuple[str, list[dict]]:
    """Random documents joined by blank lines until min_chars; with random_start the first begins at a
    random line of it. With cut the last one ends at the first line end past min_chars, so that a long book
    is not tokenised whole for a few pages. Returns the text and the rows in it."""
    parts: list[str] = []
    picked: list[dict] = []
    size = 0
    while size < min_chars:
        row = rng.choice(rows)
        text = text_of(row).strip()
        if random_start and not parts:
            nl = text.find("\n", rng.randrange(len(text)))
            text = text[nl + 1:] if nl >= 0 else text
        end = text.find("\n", min_chars - size) if cut else -1
        text = text[:end].rstrip() if end > 0 else text
        parts.append(text)
        picked.append(row)
        size += len(text) + 2
    return "\n\n".join(parts), picked


def names_of(rows: list[dict]) -> list[str]:
    return [r["name"] for r in rows]


def book_text(row: dict) -> str:
    return row["text"]


def book_window(c: Corpus, rend: Renderer, L: int, rng: random.Random) -> tuple[list[int], list[str]]:
    """Kind 0: book_windows' random span, over one book or several joined (it wants 7 characters a token)."""
    while True:
        text, picked = gather(c.rows["books"], book_text, rng, 7 * L, cut=False)
        win = book_windows([{"text": text}], rend, L, 1, rng)
        if win:
            return win[0], names_of(picked)


def prompt_window(c: Corpus, rend: Renderer, L: int, rng: random.Random) -> tuple[list[int], list[str]]:
    """Kind 1: contracts or meetings (by their share of characters) as one document in the app prompt."""
    kind = rng.choices(["contracts", "meetings"], weights=[c.chars["contracts"], c.chars["meetings"]])[0]
    rows = c.rows[kind]
    text, picked = gather(rows, lambda r: doc_text(kind, r), rng, int(L * BOOK_CHARS_PER_TOKEN))
    pre, post = rend.around(Path(picked[0]["name"]).name, rng.choice(doc_questions(kind, picked[0])))
    room = L - len(pre) - len(post)
    body = rend.ids(text)
    while len(body) < room:  # rare: more documents, tokenised on their own after a blank line
        more, extra = gather(rows, lambda r: doc_text(kind, r), rng, (room - len(body)) * 6)
        body += rend.ids("\n\n" + more)
        picked += extra
    return pre + body[:room] + post, names_of(picked)


def synthetic_window(c: Corpus, rend: Renderer, L: int, rng: random.Random, eot: int
                     ) -> tuple[list[int], int, dict]:
    """Kind 2: (window ids, answer tokens at its end, task record)."""
    task = T.sample_task(rng)
    text, picked = gather(c.rows["books"], book_text, rng, int(L * BOOK_CHARS_PER_TOKEN), random_start=True)
    pre, post = rend.around(Path(picked[0]["name"]).name, task.question)
    answer = rend.ids(task.answer) + [eot]
    needles = rend.tok([" " + s for s in task.needles], add_special_tokens=False)["input_ids"]
    size = L - len(pre) - len(post) - len(answer) - sum(map(len, needles))
    pieces = rend.tok(T.sentences(text), add_special_tokens=False)["input_ids"]
    while sum(map(len, pieces)) < size:  # rare: more books after a blank line
        more, extra = gather(c.rows["books"], book_text, rng, L)
        pieces += rend.tok(T.sentences("\n\n" + more), add_special_tokens=False)["input_ids"]
        picked += extra
    body, starts, _ = T.hide(pieces, needles, task.depths, size)
    ids = pre + body + post + answer
    rec = {"variant": task.variant, "question": task.question, "answer": task.answer, "values": task.values,
           "needles": task.needles, "depths": [round(s / len(body), 4) for s in starts], "documents": names_of(picked)}
    return ids, len(answer), rec


def build_length(c: Corpus, rend: Renderer, L: int, n: int, synthetic: float, prompted: float, seed: int,
                 eot: int) -> tuple[dict[str, np.ndarray], list[dict], set[str]]:
    """n shuffled windows of L tokens: arrays for the npz, synthetic task records, document names used."""
    rng = random.Random(f"{seed}-{L}")
    n_syn = round(n * synthetic)
    n_prompt = round((n - n_syn) * prompted)
    kinds = [0] * (n - n_syn - n_prompt) + [1] * n_prompt + [2] * n_syn
    rng.shuffle(kinds)
    tokens = np.zeros((n, L), np.uint16)
    answer = np.zeros((n, L), np.uint8)
    records: list[dict] = []
    used: set[str] = set()
    for i, kind in enumerate(kinds):
        if kind == 2:
            ids, n_answer, rec = synthetic_window(c, rend, L, rng, eot)
            answer[i, L - n_answer:] = 1
            records.append({"row": i, **rec})
            names = rec["documents"]
        else:
            ids, names = (book_window if kind == 0 else prompt_window)(c, rend, L, rng)
        if len(ids) != L:
            raise AssertionError(f"window of {len(ids)} tokens, {L} wanted ({KIND_NAMES[kind]})")
        tokens[i] = ids
        used.update(names)
    return {"tokens": tokens, "answer": answer, "kind": np.asarray(kinds, np.uint8)}, records, used


def names_digest(names: set[str]) -> dict:
    ordered = sorted(names)
    return {"count": len(ordered), "sha256": hashlib.sha256("\n".join(ordered).encode()).hexdigest(),
            "names": ordered}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the shared data dir (books/, cuad/, qmsum/ below it)")
    ap.add_argument("--tokenizer", required=True, help="a model dir with tokenizer.json and a chat template")
    ap.add_argument("--lengths", default="16384,65536", help="window lengths in tokens, comma-separated")
    ap.add_argument("--windows", default="120,30", help="windows per length, comma-separated")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic", type=float, default=0.5, help="share of synthetic retrieval windows")
    ap.add_argument("--prompted", type=float, default=0.4, help="share of the natural windows in the app prompt")
    args = ap.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.windows = [int(x) for x in args.windows.split(",")]
    if len(args.lengths) != len(args.windows):
        ap.error("--lengths and --windows need as many values")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    tok = uint16_tokenizer(args.tokenizer)
    rend, eot = Renderer(tok), end_of_turn(tok)
    corpus = load_corpus(Path(args.data).expanduser())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    per_length = {}
    for L, n in zip(args.lengths, args.windows):
        t1 = time.perf_counter()
        arrays, records, names = build_length(corpus, rend, L, n, args.synthetic, args.prompted, args.seed, eot)
        path = out / f"windows_{L}.npz"
        np.savez_compressed(path, **arrays)
        (out / f"tasks_{L}.json").write_text(json.dumps(records, indent=1) + "\n")
        used |= names
        size = path.stat().st_size
        counts = np.bincount(arrays["kind"], minlength=3)
        per_length[L] = {
            "file": path.name, "windows": n, "tokens": n * L, "bytes": size,
            "bytes_per_million_tokens": round(size / (n * L) * 1e6), "seconds": round(time.perf_counter() - t1, 1),
            "kinds": {k: int(counts[i]) for i, k in enumerate(KIND_NAMES)},
            "variants": {v: sum(r["variant"] == v for r in records) for v in T.VARIANTS},
            "answer_tokens": int(arrays["answer"].sum())}
        print(f"L={L}: {n} windows {per_length[L]['kinds']} {size / 1e6:.1f} MB "
              f"in {per_length[L]['seconds']} s", file=sys.stderr)
    if any(held_out(name, HELD_OUT_MOD) for name in used):
        raise AssertionError("a held-out document reached a window")
    meta = {"args": {k: v for k, v in vars(args).items()}, "seed": args.seed,
            "split": {"rule": SPLIT_RULE, "mod": HELD_OUT_MOD, "held_out_docs": corpus.held,
                      "train_docs": {k: len(v) for k, v in corpus.rows.items()}},
            "documents_used": names_digest(used), "eot_token": eot, "vocab": len(tok),
            "lengths": per_length, "tokens": sum(p["tokens"] for p in per_length.values()),
            "bytes": sum(p["bytes"] for p in per_length.values()),
            "build_seconds": round(time.perf_counter() - t0, 1)}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{meta['tokens'] / 1e6:.1f} M tokens, {meta['bytes'] / 1e6:.1f} MB, {meta['build_seconds']} s -> {out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
