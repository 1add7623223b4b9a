"""Fine-tuning windows for grounded answers (issue 17): whole documents at their real lengths in docreader's
own prompt, questions from bench/sft_tasks.py, every assistant reply supervised.

    python -m bench.make_sft_data --data ../shared/data --tokenizer ~/.cache/docreader/models/smollm2-135m-instruct \\
        --buckets 4096,8192,16384,32768,65536 --tokens 2e6,3e6,4e6,2e6,1e6 --out DIR [--mix DIR] [--seed 0]

A window is one conversation about one document: 1-8 turns (the later ones follow-ups), rendered exactly
as `docreader ask`/`chat` renders them (docreader.prompt), the replies and their end-of-turn tokens
marked in `answer`. Windows have fixed lengths (buckets) so that a trainer batches them; a conversation
shorter than its bucket is padded with end-of-turn tokens that no loss sees, a longer document is cut
first (contracts at a line end, meetings by turns, haystacks by size) — a question whose evidence was cut
away is dropped, never relabelled.

Output (the format of bench/make_long_data.py, plus an `lm` mask):
  DIR/windows_{L}.npz  tokens uint16 [N, L]; answer uint8 [N, L] (supervised tokens); lm uint8 [N, L] (tokens
                       the plain next-token loss may use: 0 in these windows, 1 in mixed-in book windows);
                       kind uint8 [N] (KINDS index)
  DIR/meta.json        arguments, split rule, counts per kind and bucket, documents used, seconds
With --mix DIR, book-text windows (kind 0) of DIR/windows_{L}.npz from bench/make_long_data.py are added,
--mix-share of the windows of each bucket they exist for, so long-context language modelling continues.

Split: documents with bench.eval_data.held_out(name) (sha1 of the name % 10 == 0) never reach a window;
bAbI stories with index % 10 == 0 neither (bench/eval_grounded.py evaluates on exactly those).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from bench import eval_data as D
from bench import sft_tasks as S
from bench.make_indexer_data import FILES, read_jsonl
from bench.make_long_data import end_of_turn, uint16_tokenizer
from docreader.prompt import _render, messages_for, tokenize_document

KINDS = ("book", "contract", "meeting", "babi-qa1", "babi-qa2", "babi-qa3", "needle", "irc")
SHARES = {"contract": 0.45, "meeting": 0.15, "babi": 0.17, "needle": 0.13, "irc": 0.10}
BABI_TASKS = {1: 0.55, 2: 0.45}  # qa3 is not in the shared bAbI files
TURNS = (1, 2, 4, 8)
BUNDLE_FROM = 16384  # from this window length, short contracts come bundled with others (bench.sft_tasks)  # conversation lengths drawn uniformly: more answers per (costly) window


class Builder:
    def __init__(self, tok, data: Path, seed: int, shares: dict[str, float] | None = None, bundle: float = 0.0) -> None:
        self.tok = tok
        self.shares = shares or SHARES
        self.bundle = bundle  # share of short contracts bundled with others in windows >= BUNDLE_FROM
        self.eot = end_of_turn(tok)
        train = lambda rows: [r for r in rows if not D.held_out(r["name"])]
        self.contracts = train(read_jsonl(data / FILES["contracts"]))
        self.meetings = train(read_jsonl(data / FILES["meetings"]))
        self.books = [r["text"] for r in train(read_jsonl(data / FILES["books"]))]
        self.stories = {t: S.load_babi(data / "babi" / "en-10k-train.tar.xz", t, "train") for t in BABI_TASKS}
        self.irc = sorted(p for p in (data / "irc").glob("*.raw.txt") if not D.held_out(p.name.split(".")[0]))
        self.cpt = S.chars_for(tok, self.books, 1000) / 1000  # characters per token of book text
        self.used: set[str] = set()
        self._doc: tuple = (None, [])  # (Document, its token ids): a document's conversations come one after another
        self.rng_fill = random.Random(f"{seed}-fill")

    # -- one conversation -> token ids + supervised mask ------------------------------------------------

    def render(self, turns: list[S.Example]) -> tuple[list[int], list[int]]:
        """All turns about turns[0].document; every reply (and its <|im_end|>) is supervised."""
        doc = turns[0].document
        if self._doc[0] is not doc:
            self._doc = (doc, tokenize_document(self.tok, doc.text)[0])
        doc_ids = self._doc[1]
        history = [(t.question, t.reply) for t in turns[:-1]]
        msgs, texts = messages_for(doc, turns[-1].question, history)
        ids, _, where = _render(self.tok, msgs, texts, doc_ids)
        mask = [0] * len(ids)
        for i in range(len(history)):
            a, b = where[f"A{i}"]
            for j in range(a, min(b + 1, len(ids))):  # the reply and the end-of-turn after it
                mask[j] = 1
        last = self.tok(turns[-1].reply, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [self.eot]
        return ids + last, mask + [1] * len(last)

    # -- sources: each returns conversations (lists of Examples about one document) of <= ~L tokens ------

    def contract(self, L: int, rng: random.Random) -> list[list[S.Example]]:
        if not self.contracts:
            return []
        row = rng.choice(self.contracts)
        max_chars = int((L - 600) * 3.9)  # contracts tokenise at ~4.3 chars a token; render() checks the real size
        if L >= BUNDLE_FROM and len(row["text"]) < max_chars // 2 and rng.random() < self.bundle:
            rows, size = [row], len(row["text"])
            for other in rng.sample(self.contracts, min(len(self.contracts), 40)):
                if other is not row and size + len(other["text"]) + 3 <= max_chars:
                    rows.append(other)
                    size += len(other["text"]) + 3
            rng.shuffle(rows)
            exs = S.contract_bundle_examples(rows, rng)
            rng.shuffle(exs)
            return self._conversations(exs, rng)
        exs = S.contract_examples(row, rng, 5, 3, max_chars=max_chars)
        rng.shuffle(exs)
        return self._conversations(exs, rng)

    def meeting(self, L: int, rng: random.Random) -> list[list[S.Example]]:
        if not self.meetings:
            return []
        row = rng.choice(self.meetings)
        n_turns = len(row["transcript"])
        chars = sum(len(t.get("content") or "") + 20 for t in row["transcript"])
        keep = max(10, int(n_turns * min(1.0, (L - 800) * 3.6 / max(chars, 1))))
        exs = S.meeting_examples(row, rng, None, max_turns=keep)
        rng.shuffle(exs)
        return self._conversations(exs[:6], rng)

    def babi(self, L: int, rng: random.Random) -> list[list[S.Example]]:
        task = rng.choices(list(BABI_TASKS), weights=list(BABI_TASKS.values()))[0]
        story = rng.choice(self.stories[task])
        return [[S.babilong_example(story, self.books, self._chars(L), rng, f"babi-{L}")]]

    def needle(self, L: int, rng: random.Random) -> list[list[S.Example]]:
        return [[S.needle_example(self.books, self._chars(L), rng, f"needle-{L}")]]

    def _chars(self, L: int) -> int:
        """Haystack characters for an L-token window: books tokenise unevenly, so aim at 60-95% of it and
        pad (a window that still overflows is dropped)."""
        return int((L - 400) * self.cpt * self.rng_fill.uniform(0.6, 0.95))

    def irc_log(self, L: int, rng: random.Random) -> list[list[S.Example]]:
        exs = S.irc_examples(rng.choice(self.irc), rng, 3) if self.irc else []
        return self._conversations(exs, rng)

    def _conversations(self, exs: list[S.Example], rng: random.Random) -> list[list[S.Example]]:
        out, i = [], 0
        while i < len(exs):
            n = rng.choice(TURNS)
            out.append(exs[i:i + n])
            i += n
        return out

    # -- a bucket ----------------------------------------------------------------------------------------

    def bucket(self, L: int, tokens: int, rng: random.Random) -> dict[str, np.ndarray]:
        sources = {"contract": self.contract, "meeting": self.meeting, "babi": self.babi, "needle": self.needle,
                   "irc": self.irc_log}
        rows_t, rows_a, kinds, fill = [], [], [], 0
        shares = self.shares
        got = dict.fromkeys(shares, 0)  # windows per source: the next source is the one furthest below its share
        while fill < tokens:
            src = max(shares, key=lambda k: shares[k] - got[k] / max(1, len(kinds)) + rng.random() * 1e-3)
            got[src] += 1  # counted even when it yields nothing (no IRC log), so it cannot stall the loop
            for conv in sources[src](L, rng):
                ids, mask = self.render(conv)
                if len(ids) > L or not any(mask):
                    continue  # the cut guess was too generous: drop rather than cut through a reply
                pad = L - len(ids)
                rows_t.append(ids + [self.eot] * pad)
                rows_a.append(mask + [0] * pad)
                kinds.append(KINDS.index(conv[-1].kind))
                got[src] += 1
                self.used.update(conv[-1].document.meta.get("members") or [conv[-1].name])
                fill += L
        n = len(rows_t)
        return {"tokens": np.asarray(rows_t, np.uint16), "answer": np.asarray(rows_a, np.uint8),
                "lm": np.zeros((n, L), np.uint8), "kind": np.asarray(kinds, np.uint8)}


def mix_books(arrays: dict[str, np.ndarray], path: Path, share: float, rng: random.Random) -> dict[str, np.ndarray]:
    """Add kind-0 (book text) windows of a make_long_data npz: share of the result, lm loss on every token."""
    with np.load(path) as z:
        books = z["tokens"][z["kind"] == 0]
    n = min(len(books), round(len(arrays["tokens"]) * share / max(1e-9, 1 - share)))
    if n == 0:
        return arrays
    pick = books[rng.sample(range(len(books)), n)]
    L = arrays["tokens"].shape[1]
    out = {"tokens": np.concatenate([arrays["tokens"], pick[:, :L]]),
           "answer": np.concatenate([arrays["answer"], np.zeros((n, L), np.uint8)]),
           "lm": np.concatenate([arrays["lm"], np.ones((n, L), np.uint8)]),
           "kind": np.concatenate([arrays["kind"], np.zeros(n, np.uint8)])}
    order = np.random.default_rng(rng.randrange(2**32)).permutation(len(out["kind"]))
    return {k: v[order] for k, v in out.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the shared data dir (books/, cuad/, qmsum/, babi/, irc/)")
    ap.add_argument("--tokenizer", required=True, help="a model dir with tokenizer.json and a chat template")
    ap.add_argument("--buckets", default="4096,8192,16384,32768,65536", help="window lengths in tokens")
    ap.add_argument("--tokens", default="2e6,3e6,4e6,2e6,1e6", help="tokens per bucket (windows x length)")
    ap.add_argument("--mix", help="a bench/make_long_data.py output dir whose book windows are mixed in")
    ap.add_argument("--mix-share", default="0.15", help="share of book windows: one value, or one per bucket "
                    "(e.g. more at 2k, where the plain LM loss keeps short-context quality)")
    ap.add_argument("--shares", help="source shares, e.g. contract=0.45,meeting=0.15,babi=0.17,needle=0.13,irc=0.1 "
                    "(the default)")
    ap.add_argument("--bundle", type=float, default=0.0, help="share of short contracts that come bundled with "
                    f"other contracts as one document in windows of >= {BUNDLE_FROM} tokens")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        a.shares = {k: float(v) for k, v in (kv.split("=") for kv in a.shares.split(","))} if a.shares else None
    except ValueError:
        ap.error("--shares takes name=share pairs separated by commas")
    if a.shares and not set(a.shares) <= set(SHARES):
        ap.error(f"--shares: unknown source(s) {sorted(set(a.shares) - set(SHARES))}; known: {sorted(SHARES)}")
    a.buckets = [int(x) for x in a.buckets.split(",")]
    a.tokens = [int(float(x)) for x in a.tokens.split(",")]
    shares = [float(x) for x in str(a.mix_share).split(",")]
    a.mix_share = shares * len(a.buckets) if len(shares) == 1 else shares
    if len(a.buckets) != len(a.tokens) or len(a.mix_share) != len(a.buckets):
        ap.error("--buckets, --tokens (and --mix-share when it lists several) need as many values")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    tok = uint16_tokenizer(args.tokenizer)
    b = Builder(tok, Path(args.data).expanduser(), args.seed, args.shares, args.bundle)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per = {}
    for L, n_tokens, share in zip(args.buckets, args.tokens, args.mix_share):
        rng = random.Random(f"{args.seed}-sft-{L}")
        t1 = time.perf_counter()
        arrays = b.bucket(L, n_tokens, rng)
        mixed = Path(args.mix or "") / f"windows_{L}.npz"
        if args.mix and mixed.exists():
            arrays = mix_books(arrays, mixed, share, rng)
        np.savez_compressed(out / f"windows_{L}.npz", **arrays)
        counts = np.bincount(arrays["kind"], minlength=len(KINDS))
        per[L] = {"windows": int(len(arrays["kind"])), "kinds": {k: int(c) for k, c in zip(KINDS, counts)},
                  "answer_tokens": int(arrays["answer"].sum()), "seconds": round(time.perf_counter() - t1, 1)}
        print(f"L={L}: {per[L]}", file=sys.stderr, flush=True)
    if any(D.held_out(n) for n in b.used if not n.startswith(("babi-", "needle-"))):
        raise AssertionError("a held-out document reached a window")
    meta = {"args": vars(args), "split": "documents with bench.eval_data.held_out(name) and bAbI stories with "
            "index % 10 == 0 are excluded", "buckets": per, "documents_used": sorted(b.used),
            "chars_per_token_books": round(b.cpt, 3), "build_seconds": round(time.perf_counter() - t0, 1)}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"done in {meta['build_seconds']} s -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
