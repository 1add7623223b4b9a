"""Read evaluation data in the formats of ../shared/data/README.md, from a directory or single files.

`--data` may be the data directory (books/, cuad/, qmsum/ below it, any `*.jsonl`/`*.jsonl.xz` found) or
one or more files; each row is classified by its fields, not by the file name:

- contracts (CUAD): {"name", "text", "questions": [{"category", "question", "answers": [{"text", "start",
  "end", "parts": [[s, e], ...]}]}]}
- meetings (QMSum): {"name", "transcript": [{"speaker", "content"}], "specific_queries": [{"query",
  "answer", "relevant_text_span": [["first", "last"], ...]}]}
- books: {"name", "text"} (haystack text for the needle test)
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from docreader.document import Document, Region
from docreader.loaders.chat import Message, render_chat


def held_out(name: str, mod: int = 10) -> bool:
    """The indexer's training split (bench/make_indexer_data.py): sha1(name) % 10 == 0 was never trained on."""
    return int(hashlib.sha1(name.encode("utf-8")).hexdigest()[:8], 16) % mod == 0


def _open(path: Path):
    name = path.name
    if name.endswith(".xz") or name.endswith(".lzma"):
        return lzma.open(path, "rt", encoding="utf-8")
    if name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if name.endswith(".bz2"):
        return bz2.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def data_files(paths: list[str | Path]) -> list[Path]:
    """Every JSON-lines file under the given directories, plus the given files themselves."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and any(f.name.endswith(s) for s in (".jsonl", ".jsonl.xz", ".jsonl.gz", ".jsonl.bz2")):
                    out.append(f)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return out


def row_kind(row: dict) -> str | None:
    if isinstance(row.get("transcript"), list):
        return "meeting"
    if isinstance(row.get("text"), str) and isinstance(row.get("questions"), list):
        return "contract"
    if isinstance(row.get("text"), str):
        return "book"
    return None


def iter_rows(files: list[Path], kinds: set[str]) -> Iterator[tuple[str, dict]]:
    """(kind, row) for every row of a wanted kind; unparsable lines are skipped with a count on stderr."""
    import sys

    for f in files:
        bad = 0
        with _open(f) as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    bad += 1
                    continue
                kind = row_kind(row) if isinstance(row, dict) else None
                if kind in kinds:
                    yield kind, row
        if bad:
            print(f"[eval] {f}: skipped {bad} unparsable lines", file=sys.stderr)


@dataclass
class Rows:
    contracts: list[dict] = field(default_factory=list)
    meetings: list[dict] = field(default_factory=list)
    books: list[dict] = field(default_factory=list)


def read_all(paths: list[str | Path], kinds: set[str]) -> Rows:
    rows = Rows()
    for kind, row in iter_rows(data_files(paths), kinds):
        row.setdefault("name", f"{kind}-{len(getattr(rows, kind + 's'))}")
        getattr(rows, kind + "s").append(row)
    return rows


def pick(rows: list[dict], n: int | None, size, lo: int, hi: int, prefer_held_out: bool = True) -> list[dict]:
    """Up to n rows with lo <= size(row) <= hi: held-out names first, then by name hash (deterministic,
    independent of file order)."""
    ok = [r for r in rows if lo <= size(r) <= hi]
    key = lambda r: (not held_out(r["name"]) if prefer_held_out else 0,
                     hashlib.sha1(r["name"].encode("utf-8")).hexdigest())
    ok.sort(key=key)
    return ok if n is None else ok[:n]


# --- contracts ---------------------------------------------------------------------------------------

def contract_document(row: dict, max_chars: int | None = None) -> tuple[Document, int]:
    """The contract as a plain-text Document (the path the CLI takes for .txt); cut to max_chars at a line
    end when given. Returns the document and the number of characters kept."""
    text = row["text"]
    if max_chars is not None and len(text) > max_chars:
        cut = text.rfind("\n", 0, max_chars)
        text = text[: cut if cut > max_chars // 2 else max_chars]
    name = row["name"] if row["name"].endswith(".txt") else row["name"] + ".txt"
    return Document(name, "txt", text, [], {"kind": "contract"}), len(text)


def gold_ranges(question: dict) -> list[tuple[int, int]]:
    out = []
    for a in question.get("answers") or []:
        parts = a.get("parts") or [[a.get("start"), a.get("end")]]
        for s, e in parts:
            if s is not None and e is not None and int(e) > int(s):
                out.append((int(s), int(e)))
    return out


def contract_questions(row: dict, kept_chars: int, n_present: int | None, n_absent: int | None) -> list[dict]:
    """Questions with gold ranges inside the kept text (answerable) and questions without answers
    (absent); a question whose gold lies (partly) beyond a cut is dropped. Order: the dataset's."""
    present, absent = [], []
    for q in row["questions"]:
        gold = gold_ranges(q)
        item = {"category": q.get("category", ""), "question": q["question"], "gold": gold,
                "gold_text": [a.get("text", "") for a in q.get("answers") or []]}
        if not gold:
            absent.append(item)
        elif all(e <= kept_chars for _, e in gold):
            present.append(item)
    present = present if n_present is None else _spread(present, n_present)
    absent = absent if n_absent is None else _spread(absent, n_absent)
    return present + absent


def _spread(items: list, n: int) -> list:
    """n items spread evenly over the list (so a quick run does not only see the first categories)."""
    if n <= 0:
        return []
    if n >= len(items):
        return items
    return [items[round(i * (len(items) - 1) / max(n - 1, 1))] for i in range(n)] if n > 1 else items[:1]


# --- meetings ----------------------------------------------------------------------------------------

def meeting_document(row: dict, max_turns: int | None = None) -> Document:
    """The transcript as a chat Document: one message region per turn (region index = turn index)."""
    turns = row["transcript"][: max_turns or None]
    msgs = [Message(speaker=str(t.get("speaker") or "speaker"), text=str(t.get("content") or "")) for t in turns]
    name = row["name"] if row["name"].endswith(".txt") else row["name"].rsplit(".", 1)[0] + ".txt"
    return render_chat(name, msgs, {"source": "qmsum"})


def turn_ranges(doc: Document) -> dict[int, tuple[int, int]]:
    return {r.index: (r.start, r.end) for r in doc.regions if r.kind == "message"}


def meeting_queries(row: dict, doc: Document, n: int | None) -> list[dict]:
    """Specific queries whose gold turns all lie in the rendered transcript; gold = the turns' char ranges."""
    turns = turn_ranges(doc)
    out = []
    for q in row.get("specific_queries") or []:
        gold, ok = [], True
        for span in q.get("relevant_text_span") or []:
            try:
                a, b = int(span[0]), int(span[1])
            except (ValueError, TypeError, IndexError):
                ok = False
                break
            if a not in turns or b not in turns:
                ok = False
                break
            gold.append((turns[a][0], turns[b][1]))
        if ok and gold:
            out.append({"question": q["query"], "gold": gold, "reference": q.get("answer", ""),
                        "turns": [[int(s[0]), int(s[1])] for s in q["relevant_text_span"]]})
    return out if n is None else _spread(out, n)


def message_regions(doc: Document) -> list[tuple[int, int]]:
    return sorted((r.start, r.end) for r in doc.regions if r.kind == "message")


def book_text(row: dict) -> str:
    return row["text"]


__all__ = ["held_out", "data_files", "read_all", "pick", "contract_document", "contract_questions",
           "gold_ranges", "meeting_document", "meeting_queries", "message_regions", "Region", "Document"]
