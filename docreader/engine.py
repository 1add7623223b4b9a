"""The one path every front end uses: document -> prompt -> DSA generation -> provenance -> log.

The CLI, the chat loop and the LangChain integration all call `Reader.ask`, so what they log and cite
is the same thing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dsa
from dsa.longctx import fixed_window, set_context

from . import doccache, models, store
from .document import Document
from .errors import DocreaderError
from .generate import Progress, generate, kv_dtype, prefill_chunk
from .loaders import load as load_document
from .prompt import Prompt, build, tokenize_document
from .provenance import SelectionAccumulator, Span, capped_doc_weights, record_ranges, spans_from_weights
from .quote_guide import MODES as GUIDE_MODES, QuoteGuide
from .quotes import Quote, parse, verify_all
from .token_regions import TokenCapture, TokenRegions, log_row, token_ends

_MODELS: dict[tuple, models.LoadedModel] = {}  # one load per (model, knobs) per process
FOLLOW_UP_TOKENS = 2048  # room a document's cache keeps past the first prompt for later turns (else one copy)
TURN_BUDGET = 2048  # the CLI's default room for a conversation's turns beside the document (see Reader.window)
QUESTION_ROOM = 256  # the least room a window keeps for a question besides max_new_tokens
GUIDE_ENV = "DOCREADER_QUOTE_GUIDE"  # docreader.quote_guide's mode: off, document, spans
DEFAULT_GUIDE = "document"
ANCHOR_SPANS = 3  # "spans" mode: quotes start near one of the top selected passages


def get_model(spec: str | None, overrides: dict | None = None) -> models.LoadedModel:
    key = (spec or models.DEFAULT_MODEL, tuple(sorted((k, v) for k, v in (overrides or {}).items() if v is not None)))
    if key not in _MODELS:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()  # "Loading weights" bars would interleave with the answer
        if spec in models.DEFAULT_SPECS:
            models.install_default(progress=lambda m: None)
        _MODELS[key] = models.load(spec, overrides)
    return _MODELS[key]


@dataclass
class Answer:
    text: str
    question: str
    document: Document
    spans: list[Span]
    model: str
    mode: str  # "sparse" | "dense"
    dsa: dict  # the DSAConfig in use
    prompt_tokens: int
    document_tokens: int
    new_tokens: int
    dropped_turns: int
    stop_reason: str  # "eos" | "max_tokens" (the text is cut) | "interrupted" (Ctrl-C in chat): generate.STOP_REASONS
    rope_factor: float
    native_window: int
    timings: dict = field(default_factory=dict)  # load_s, prefill_s, decode_s, tokens_per_s, phases
    id: int | None = None  # the answer's row in the log (None when not logged)
    session_id: str | None = None
    provenance: dict = field(default_factory=dict)  # what produced the spans: `models.provenance_info`
    quotes: list[Quote] = field(default_factory=list)  # the passages the answer quotes, checked against the document
    answer_text: str = ""  # the short answer after `Answer:` (the whole text when the model did not use the format)
    absent: bool = False  # the answer says the document does not say
    history_turns: int = 0  # earlier chat turns the model read word for word
    history_digest: str = ""  # what it read in place of the `dropped_turns` ("" when none, or no room for it)
    context_window: int = 0  # the window the prompt was built for (fixed for a conversation: Reader.window)
    token_regions: TokenRegions | None = None  # per answer token, the document blocks selected (audit page)

    def to_json(self) -> dict:
        return {"id": self.id, "session_id": self.session_id, "question": self.question, "answer": self.text,
                "document": {"path": self.document.path, "format": self.document.format,
                             "sha256": self.document.sha256, "chars": len(self.document.text)},
                "model": self.model, "mode": self.mode, "dsa": self.dsa,
                "tokens": {"prompt": self.prompt_tokens, "document": self.document_tokens, "new": self.new_tokens},
                "dropped_turns": self.dropped_turns, "history_turns": self.history_turns,
                "history_digest": self.history_digest, "stop_reason": self.stop_reason,
                "rope_factor": self.rope_factor, "native_window": self.native_window,
                "context_window": self.context_window, "timings": self.timings,
                "provenance": self.provenance,
                "spans": [{"rank": s.rank, "score": round(s.score, 6), "text": s.text, **s.location}
                          for s in self.spans],
                "short_answer": self.answer_text, "absent": self.absent,
                "quotes": [q.to_json() for q in self.quotes]}


class Reader:
    """A model with DSA attached plus the log: `ask` runs one question over one whole document."""

    system: str | None = None  # replaces prompts/system.txt when set

    def __init__(self, model: str | None = None, overrides: dict | None = None, db_path: str | Path | None = None,
                 weighting: str = "picks", disk_cache: bool = True, turn_budget: int | None = None,
                 quote_guide: str | None = None):
        self.spec = model
        # Quote lines kept to the document's words (docreader.quote_guide): a mode, else $DOCREADER_QUOTE_GUIDE
        self.quote_guide = quote_guide or os.environ.get(GUIDE_ENV, "").strip().lower() or DEFAULT_GUIDE
        if self.quote_guide not in GUIDE_MODES:
            raise DocreaderError(f"{GUIDE_ENV} must be one of {', '.join(GUIDE_MODES)} (got {self.quote_guide!r})")
        self.weighting = weighting  # how spans weigh the recorded keys: see docreader.provenance
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self.db_path = db_path
        self._lm: models.LoadedModel | None = None
        self.load_s = 0.0
        # The KV + indexer cache of the last prompt's prefix up to the end of the document: a later
        # question about the same document (a chat turn, an evaluation) prefills only what follows it.
        self._prefix: tuple[tuple, dsa.DSACache] | None = None
        self.disk_cache = disk_cache  # the same prefix across processes: docreader.doccache
        # None: each prompt gets the RoPE factor its own length needs (one-off questions, benches); a number:
        # the window is chosen once per document from its prompt plus this many tokens (see `window`)
        self.turn_budget = turn_budget
        self._windows: dict[tuple, tuple[int, int]] = {}  # -> (window, tokens of the document's prompt)

    @property
    def lm(self) -> models.LoadedModel:
        if self._lm is None:
            t0 = time.perf_counter()
            self._lm = get_model(self.spec, self.overrides)
            self.load_s = time.perf_counter() - t0
        return self._lm

    def load(self, path: str, format: str | None = None, password: str | None = None) -> Document:
        return load_document(path, format=format, password=password)

    def prompt(self, document: Document, question: str, history: list[tuple[str, str]] | None = None,
               max_new_tokens: int = 256, window: int | None = None) -> Prompt:
        lm = self.lm
        doc_tokens = getattr(document, "_tokens", None)
        if doc_tokens is None or doc_tokens[0] != lm.name:
            doc_tokens = (lm.name, tokenize_document(lm.tokenizer, document.text))
            document._tokens = doc_tokens  # chat turns reuse the document's tokens
        window = window or self.window(document, max_new_tokens)
        return build(lm.tokenizer, document, question, history, window=window,
                     max_new_tokens=max_new_tokens, doc_tokens=doc_tokens[1], system=self.system)

    def _pinned(self, document: Document, max_new_tokens: int) -> tuple[int, int] | None:
        lm = self.lm
        if self.turn_budget is None or fixed_window(lm.model) is not None:
            return None  # a RoPE fixed by the model's delta never changes anyway
        key = (lm.name, document.sha256, self.system, max_new_tokens, self.turn_budget)
        if key not in self._windows:
            full = lm.context_window
            base = len(self.prompt(document, "?", [], 0, window=2**62).input_ids)
            need = min(full, base + max(self.turn_budget, max_new_tokens + QUESTION_ROOM))
            factor = set_context(lm.model, need)
            self._windows[key] = (min(full, int(lm.native_window * factor)), base)
        return self._windows[key]

    def window(self, document: Document, max_new_tokens: int = 256) -> int:
        """The window a conversation about `document` runs in. With a `turn_budget`, it is chosen once, from
        the document's prompt plus the budget, and rounded up to what its RoPE (YaRN) factor covers: a chat
        whose turns outgrow it digests its older turns instead of switching to a larger factor mid-conversation,
        which would change every position's encoding and so read the whole document again (the cached one is
        keyed by the factor). Without a budget: the model's whole window, each prompt's factor from its length."""
        pinned = self._pinned(document, max_new_tokens)
        return pinned[0] if pinned else self.lm.context_window

    def context_note(self, document: Document, max_new_tokens: int = 256) -> str | None:
        """One line saying which window and RoPE factor a conversation got, and why (None when the model's
        RoPE is fixed, so there was nothing to choose)."""
        pinned = self._pinned(document, max_new_tokens)
        if not pinned:
            return None
        window, base = pinned
        factor = window / self.lm.native_window
        rope = "native RoPE" if factor <= 1 else f"RoPE scaled ×{factor:g} (YaRN)"
        return (f"note: a {window:,}-token window with {rope} for this conversation, chosen from the document's "
                f"prompt ({base:,} tokens) plus a {self.turn_budget:,}-token turn budget (--turn-budget); it stays "
                f"fixed: older turns become a digest, the document is not read again")

    def ask(self, document: Document | str, question: str, history: list[tuple[str, str]] | None = None,
            session_id: str | None = None, max_new_tokens: int = 256, dense: bool = False,
            on_text: Callable[[str], None] | None = None, log: bool = True, max_spans: int = 20,
            on_prefill: Progress | None = None, interruptible: bool = False) -> Answer:
        """Answer `question` from the whole document; the indexer's selections become ranked spans.
        on_prefill(done, total): the prefill's progress in tokens, after each chunk. `interruptible`: Ctrl-C
        while the answer streams ends it there (stop_reason "interrupted"; see `generate`)."""
        if isinstance(document, (str, Path)):
            document = self.load(str(document))
        if not question.strip():
            raise DocreaderError("the question is empty", path=document.path)
        lm = self.lm
        window = self.window(document, max_new_tokens)
        p = self.prompt(document, question, history, max_new_tokens, window)
        model, cfg = lm.model, lm.model.dsa_state.config
        factor = set_context(model, window if self._pinned(document, max_new_tokens) else len(p.input_ids) + max_new_tokens)
        capture = TokenCapture(p, max_new_tokens)  # per answer token, for the audit page (docreader.token_regions)
        acc = SelectionAccumulator(len(p.input_ids) + max_new_tokens, ranges=record_ranges(p),
                                   weighting=self.weighting, per_query=capture.add)
        mode = "dense" if dense else "sparse"
        previous = cfg.mode
        total = len(p.input_ids) + max_new_tokens
        kv = None if dense else kv_dtype(model, total)  # dense attention would upcast a bf16 cache whole every step
        key = (lm.name, mode, factor, kv, hash(tuple(p.input_ids[: p.doc_end])))
        fresh = lambda: dsa.new_cache(model, capacity=total + FOLLOW_UP_TOKENS, dtype=kv)  # noqa: E731
        source, disk, t_cache = "none", None, time.perf_counter()
        if self._prefix and self._prefix[0] == key:
            cache, source = self._prefix[1], "memory"
        else:
            cache = None
            if self.disk_cache and p.doc_end > 0:
                disk = doccache.make_key(self._cache_parts(mode, factor, kv), p.input_ids[: p.doc_end])
                cache = doccache.load(*disk, p.doc_end, fresh)
                if cache is not None:
                    source = "disk"
                    doccache.info(f"read {p.doc_end:,} tokens of {document.path} from the document cache "
                                  f"in {time.perf_counter() - t_cache:.1f} s")
            cache = cache or fresh()
        load_cache_s = time.perf_counter() - t_cache
        cache.crop(p.doc_end)
        cached = cache.get_seq_length()
        self._prefix = None  # until this generation finishes, the cache is not a clean prefix
        dsa.set_mode(model, mode)
        dsa.take_paths(model)
        try:
            with dsa.recording(model, acc.recorder), dsa.profiling(model) as phases:
                guide = None if self.quote_guide == "off" else QuoteGuide(
                    lm.tokenizer, document.text, anchors=None if self.quote_guide != "spans" else lambda: [
                        (s.char_start, s.char_end) for s in spans_from_weights(
                            acc.weights, acc.rows, p, document, cfg.sink_tokens, max_spans=ANCHOR_SPANS)])
                gen = generate(model, lm.tokenizer, p.input_ids, max_new_tokens, on_text=on_text, cache=cache,
                               on_prefill=on_prefill, interruptible=interruptible, guide=guide)
        finally:
            dsa.set_mode(model, previous)
            paths = dsa.take_paths(model)
        cache.crop(p.doc_end)
        self._prefix = (key, cache)
        save_cache_s = 0.0
        if disk is not None and source == "none" and cache.get_seq_length() == p.doc_end:
            t_save = time.perf_counter()
            doccache.save(*disk, cache, p.doc_end, {"document": document.path, "model": lm.name})
            save_cache_s = time.perf_counter() - t_save
        spans = spans_from_weights(acc.weights, acc.rows, p, document, cfg.sink_tokens, max_spans=max_spans)
        ans = Answer(gen.text, question, document, spans, lm.name, mode, dataclasses.asdict(cfg) | {"mode": mode},
                     len(p.input_ids), len(p.doc_offsets), gen.new_tokens, p.dropped_turns, gen.stop_reason,
                     factor, lm.native_window,
                     {"load_s": round(self.load_s, 3), "prefill_s": round(gen.prefill_s, 3),
                      "decode_s": round(gen.decode_s, 3), "tokens_per_s": round(gen.tokens_per_s, 2), "cached_prefix_tokens": cached,
                      "prefix_cache": source, "cache_load_s": round(load_cache_s, 3), "cache_save_s": round(save_cache_s, 3),
                      "phases_s": {k: round(v, 3) for k, v in phases.items() if k != "keys_read"},
                      "keys_read": int(phases.get("keys_read", 0))},
                     session_id=session_id, history_turns=p.history_turns, history_digest=p.digest,
                     context_window=window,
                     provenance=models.provenance_info(lm, mode, paths, self.weighting)
                     | {"undecodable_pages": document.meta.get("undecodable_pages", []),
                        "quote_guide": {"mode": self.quote_guide, "replaced": guide.replaced if guide else 0}})
        ans.token_regions = capture.finish(p, len(gen.text), token_ends(lm.tokenizer, gen.token_ids, gen.text),
                                           capped_doc_weights(acc.weights, acc.rows, p, cfg.sink_tokens),
                                           len(document.text))
        parsed = parse(gen.text)
        ans.quotes, ans.answer_text, ans.absent = verify_all(parsed.quotes, document), parsed.answer, parsed.absent
        if log:
            ans.id = self.save(ans)
        return ans

    def _cache_parts(self, mode: str, factor: float, kv) -> dict:
        """Everything besides the prompt that changes the document prefix's K/V (see docreader.doccache)."""
        lm = self.lm
        model = lm.model
        return {"model": lm.name, "weights": models.weights_fingerprint(lm.path), "adapter": models._adapter_info(lm.adapter),
                "indexer": models._indexer_info(lm.indexer_weights), "dsa": dataclasses.asdict(model.dsa_state.config),
                "mode": mode, "rope_factor": factor, "kv_dtype": str(kv), "dtype": str(next(model.parameters()).dtype),
                "matmul": lm.matmul,
                "prefill_chunk": prefill_chunk(),
                "code": models.code_version()["code_sha256"]}

    def save(self, ans: Answer) -> int:
        """Log the answer (creating its chat session with the first one); when the log cannot take it,
        write it to a JSON file and say where in the error."""
        row = {"session_id": ans.session_id, "question": ans.question, "answer": ans.text, "model": ans.model,
               "mode": ans.mode, "dsa": json.dumps(ans.dsa), "prompt_tokens": ans.prompt_tokens,
               "document_tokens": ans.document_tokens, "new_tokens": ans.new_tokens,
               "dropped_turns": ans.dropped_turns, "load_s": ans.timings["load_s"],
               "prefill_s": ans.timings["prefill_s"], "decode_s": ans.timings["decode_s"],
               "tokens_per_s": ans.timings["tokens_per_s"], "provenance": json.dumps(ans.provenance),
               # read with defaults: answers built elsewhere (older code, tests, integrations) may lack them
               "stop_reason": getattr(ans, "stop_reason", None), "rope_factor": getattr(ans, "rope_factor", None),
               "cached_tokens": ans.timings.get("cached_prefix_tokens")}
        spans = [{"rank": s.rank, "char_start": s.char_start, "char_end": s.char_end, "page": s.location.get("page"),
                  "label": s.location.get("label", ""), "score": s.score, "location": json.dumps(s.location)}
                 for s in ans.spans]
        quotes = [{"rank": rank, "text": q.text, "verified": q.verified, "char_start": q.char_start,
                   "char_end": q.char_end, "score": q.score, "page": q.location.get("page"),
                   "label": q.location.get("label", ""), "location": json.dumps(q.location)}
                  for rank, q in enumerate(ans.quotes, 1)]
        try:
            db = store.open_db(self.db_path)
            return store.save_answer(db, ans.document, row, spans, session_model=self.spec or models.DEFAULT_MODEL,
                                     quotes=quotes, token_regions=log_row(ans.token_regions))
        except store.LogError as e:  # the answer was generated (and maybe streamed): keep it
            kept = store.keep_unsaved(ans.to_json(), Path(e.path or store.db_path()))
            where = f"the answer is kept in {kept}" if kept else "the answer could not be kept anywhere"
            raise store.LogError(f"not logged: {e}; {where}") from e
