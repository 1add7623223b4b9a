"""One logged answer with everything an audit view shows: the `docreader audit` text and JSON, the HTML page
(`audit_html`) and the highlighted PDF (`audit_pdf`) all read it from here, so they show the same thing."""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import store, token_regions
from .document import Document, Region
from .token_regions import TokenRegions

FIELDS = ("id", "session_id", "question", "answer", "model", "mode", "created", "prompt_tokens", "document_tokens",
          "new_tokens", "prefill_s", "decode_s")


@dataclass
class AuditRecord:
    answer: dict  # the answer's fields (FIELDS), dsa, provenance
    document: Document  # as logged: the text the model read and its regions
    document_sha256: str
    spans: list[dict]  # rank, score, text, char_start, char_end, label, page/line/message fields
    quotes: list[dict]  # rank, text, verified, char_start/char_end (None when unverified), label
    tokens: TokenRegions | None  # per answer token selections; None for answers logged without them

    def to_json(self) -> dict:
        """`docreader audit --json`."""
        return {**self.answer, "document": {"path": self.document.path, "sha256": self.document_sha256},
                "spans": self.spans, "quotes": self.quotes}

    def describe_weights(self) -> str:
        """Which indexer (and delta) produced the selections, in a few words."""
        prov = self.answer.get("provenance") or {}
        ix = prov.get("indexer") or {}
        if not ix:
            return "not recorded (answer logged before provenance was stored)"
        indexer = f"indexer {ix['sha256'][:12]}" if ix.get("trained") else f"untrained indexer (seed {ix.get('seed')})"
        adapter = prov.get("adapter") or {}
        return indexer + (f" · delta {adapter['sha256'][:12]}" if adapter.get("sha256") else "")

    def describe_backend(self) -> str:
        prov = self.answer.get("provenance") or {}
        if not prov:
            return "not recorded"
        paths = ", ".join(f"{k} {v:,}" for k, v in (prov.get("paths") or {}).items())
        code = (prov.get("code") or {}).get("code_sha256", "?")
        return (f"{prov.get('attention', self.answer['mode'])} attention · {prov.get('cpu_kernel') or prov.get('device')}"
                f" · queries by path: {paths or '-'} · weighting {prov.get('weighting')} · code {code}")


def load_record(db: store.Log, answer_id: int) -> AuditRecord:
    """An answer from the log with its document, spans, quotes and (when logged) per-token selections."""
    row = store.get_answer(db, answer_id)
    doc = store.get_document(db, row["document_id"])
    text = doc["text"]
    answer = {k: row.get(k) for k in FIELDS} | {
        "dsa": json.loads(row["dsa"]), "provenance": json.loads(row["provenance"]) if row.get("provenance") else None}
    spans = [{"rank": s["rank"], "score": s["score"], "text": text[s["char_start"]:s["char_end"]],
              **json.loads(s["location"])} for s in row["spans"]]
    document = Document(doc["path"], doc["format"], text, [Region(**r) for r in json.loads(doc["regions"])],
                        {"kind": doc["kind"]})
    return AuditRecord(answer, document, doc["id"], spans, row["quotes"], token_regions.load(db, answer_id))
