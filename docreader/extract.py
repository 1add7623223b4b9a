"""Clause tables for `docreader extract`: one row per contract, one column per clause.

The clause questions are package data (`prompts/extract/clauses.txt`): one natural question for each of CUAD's 41
categories, under a short key (`governing-law`), plus a few aliases (`term`, `renewal`, `assignment`). The answers
come from the batch run (`docreader.batch`); a cell is the short answer with its first verified quote and page,
or "not stated".
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

from .batch_io import out_format, write_rows
from .errors import DocreaderError
from .prompt import PROMPTS

CLAUSES_FILE = PROMPTS / "extract" / "clauses.txt"
NOT_STATED = "not stated"
QUOTE_CHARS = 160  # a cell's quote is cut to this (the row's whole quote is in `--rows` and the log)


@dataclass(frozen=True)
class Clause:
    key: str  # governing-law
    category: str  # CUAD's name: Governing Law
    question: str


def catalogue() -> tuple[dict[str, Clause], dict[str, str]]:
    """The shipped clauses by key, and the aliases (alias -> key)."""
    clauses: dict[str, Clause] = {}
    aliases: dict[str, str] = {}
    for line in CLAUSES_FILE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "|" in line:
            k, cat, q = (part.strip() for part in line.split("|", 2))
            clauses[k] = Clause(k, cat, q)
        else:
            alias, _, k = (part.strip() for part in line.partition("="))
            aliases[alias] = k
    return clauses, aliases


def choose(spec: str) -> list[Clause]:
    """`--clauses a,b,c` (keys, aliases, CUAD category names in any case) or `all`; each once, in order."""
    clauses, aliases = catalogue()
    by_name = {c.category.lower(): c.key for c in clauses.values()}
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    if wanted == ["all"]:
        return list(clauses.values())
    out: list[Clause] = []
    for w in wanted:
        k = w.lower()
        k = aliases.get(k, by_name.get(k, k))
        if k not in clauses:
            raise DocreaderError(f"unknown clause {w!r} (`docreader extract --list-clauses` shows them)")
        if clauses[k] not in out:
            out.append(clauses[k])
    if not out:
        raise DocreaderError("--clauses is empty (give keys such as governing-law,term,renewal or `all`)")
    return out


def cell(row: dict | None) -> dict:
    """One clause of one contract: what the table shows and what it links to."""
    if row is None:
        return {"text": "", "answer": None, "quote": None, "page": None, "verified": False, "answer_id": None,
                "error": "not answered"}
    if row.get("error") and row.get("answer") is None:
        return {"text": f"error: {row['error']}", "answer": None, "quote": None, "page": None, "verified": False,
                "answer_id": None, "error": row["error"]}
    base = {"answer_id": row.get("answer_id"), "error": row.get("error")}
    if row.get("absent"):
        return {**base, "text": NOT_STATED, "answer": NOT_STATED, "quote": None, "page": None, "verified": False}
    answer = " ".join((row.get("short_answer") or row.get("answer") or "").split())
    quote = row.get("quote")
    if quote:
        q = " ".join(quote.split())
        q = q if len(q) <= QUOTE_CHARS else q[: QUOTE_CHARS - 1] + "…"
        where = f" ({row['quote_label']})" if row.get("quote_label") else ""
        text = f'{answer} — "{q}"{where}'
    else:
        text = f"{answer} [no verified quote]"
    return {**base, "text": text, "answer": answer, "quote": quote, "page": row.get("quote_page"), "verified": bool(quote)}


def table(rows: list[dict], documents: list[str], clauses: list[Clause]) -> list[dict]:
    """One entry per document (in `documents` order): {document, error, cells: {clause key: cell}}."""
    by = {(r["document"], r.get("question")): r for r in rows}
    out = []
    for doc in documents:
        failed = by.get((doc, None))
        cells = {c.key: cell(by.get((doc, c.question)) or failed) for c in clauses}
        out.append({"document": doc, "error": failed["error"] if failed else None, "cells": cells})
    return out


def write_table(path: str, entries: list[dict], clauses: list[Clause]) -> None:
    """CSV/Parquet: a column per clause (the cell's text) plus `<key>_page`; JSONL: every cell whole."""
    fmt = out_format(path)
    p = Path(path)
    tmp = p.with_name(f".{p.name}.part")
    try:
        if fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for e in entries:
                    f.write(json.dumps(e, ensure_ascii=False) + "\n")
        else:
            columns = ["document"] + [x for c in clauses for x in (c.key, f"{c.key}_page")] + ["error"]
            flat = [{"document": e["document"], "error": e["error"],
                     **{c.key: e["cells"][c.key]["text"] for c in clauses},
                     **{f"{c.key}_page": e["cells"][c.key]["page"] for c in clauses}} for e in entries]
            write_rows(tmp, fmt, flat, columns)
        tmp.replace(p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def render_html(entries: list[dict], clauses: list[Clause], links: dict[int, str] | None = None) -> str:
    """A readable table; a cell links to its answer's audit page where `links` has one (answer id -> href)."""
    links = links or {}
    head = "".join(f'<th title="{html.escape(c.question)}">{html.escape(c.category)}</th>' for c in clauses)
    body = []
    for e in entries:
        tds = []
        for c in clauses:
            x = e["cells"][c.key]
            text = html.escape(x["text"])
            href = links.get(x["answer_id"]) if x["answer_id"] is not None else None
            if href:
                text = f'<a href="{html.escape(href)}">{text}</a>'
            elif x["answer_id"] is not None:
                text += f'<br><small>docreader audit {x["answer_id"]}</small>'
            cls = "absent" if x["text"] == NOT_STATED else "error" if x["text"].startswith("error") else (
                "quoted" if x["verified"] else "unquoted")
            tds.append(f'<td class="{cls}">{text}</td>')
        body.append(f"<tr><th>{html.escape(Path(e['document']).name)}</th>{''.join(tds)}</tr>")
    return ("<!doctype html><meta charset=utf-8><title>docreader extract</title><style>"
            "body{font:14px sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;"
            "vertical-align:top;max-width:22em}td.absent{color:#888}td.error{background:#fdd}"
            "td.unquoted{background:#ffd}</style>"
            "<p>Cells: the model's short answer, its first verified quote and page; yellow: no verified quote; grey: "
            "the model said the contract does not say. Answers of a small model: check the quotes.</p>"
            f"<table><tr><th>contract</th>{head}</tr>{''.join(body)}</table>\n")
