"""Issue 19's CLI items on a tiny random Llama (real prefill, decoding, spans and log; no real model run):
-s/--system, -t/--template and `docreader templates`, the document on stdin (`-`), `ask -c`, --max-new-tokens
and the deprecated -n, --json-stream, stop reasons, chat's line editing / several-line questions / Ctrl-C, a
conversation's window and RoPE factor chosen up front, and printed page numbers of PDFs."""

from __future__ import annotations

import json
import os
import signal

import pytest

import corpus
from conftest import db_counts
from test_cli import expect_error, run
from test_langchain_support import CONTRACT, TINY_DSA, tiny_model_dir, write_contract
from docreader import cli_chat, engine, store
from docreader.engine import Reader
from docreader.generate import generate
from docreader.loaders import load

KNOBS = [a for k, v in TINY_DSA.items() for a in ("--" + k.replace("_", "-"), str(v))]


@pytest.fixture
def tiny(monkeypatch, tmp_path_factory, tokenizer):
    """(model dir, the prompts the model read, decoded): a 2-layer random Llama whose generation really runs."""
    real, prompts = engine.generate, []

    def spy(model, tok, input_ids, max_new_tokens, **kw):
        prompts.append(tok.decode(input_ids))
        return real(model, tok, input_ids, max_new_tokens, **kw)

    monkeypatch.setattr(engine, "generate", spy)
    return str(tiny_model_dir(tmp_path_factory.mktemp("models"))), prompts


@pytest.fixture
def contract(tmp_path):
    return write_contract(tmp_path / "contract.txt")


def ask(model, *args, input=None, ok=True):
    return run("ask", *args, "--model", model, *KNOBS, input=input, ok=ok)


# -- -s/--system, -t/--template, `docreader templates` -----------------------------------------------------------

def test_system_prompt_replaces_the_built_in_one(home, tiny, contract):
    model, prompts = tiny
    ask(model, contract, "Who pays?", "--max-new-tokens", "2", "-s", "Reply in French, pirate style.")
    ask(model, contract, "Who pays?", "--max-new-tokens", "2")
    assert "Reply in French, pirate style." in prompts[0] and "You are docreader" not in prompts[0]
    assert "You are docreader" in prompts[1] and "pirate" not in prompts[1]  # one-off: not kept
    expect_error("ask", contract, "Who?", "-s", "  ", reason="the system prompt (-s) is empty")


def test_templates_list_and_use(home, tiny, contract):
    model, prompts = tiny
    rows = {t["name"]: t for t in json.loads(run("templates", "--json").stdout)}
    assert {"default", "plain", "summary"} <= set(rows) and rows["summary"]["question"]
    (home / "templates").mkdir()
    (home / "templates" / "legal.txt").write_text("description: Lawyerly.\nquestion: What are the risks?\n---\n"
                                                   "You are a careful lawyer.\n", encoding="utf-8")
    listed = run("templates").stdout
    assert "legal" in listed and "user" in listed and "Lawyerly." in listed and "summary" in listed
    out = json.loads(ask(model, contract, "-t", "legal", "--json", "--max-new-tokens", "2").stdout)
    assert out["question"] == "What are the risks?"  # the template's question, since none was given
    assert "You are a careful lawyer." in prompts[-1] and "You are docreader" not in prompts[-1]
    ask(model, contract, "Who pays?", "-t", "plain", "--max-new-tokens", "2")
    assert "plain sentences" in prompts[-1] and "Who pays?" in prompts[-1]
    expect_error("ask", contract, "Who?", "-t", "nope", reason="no template 'nope' (known: default, legal, plain")
    expect_error("ask", contract, "Who?", "-t", "plain", "-s", "x", reason="give -s/--system or -t/--template")
    (home / "templates" / "bad.txt").write_text("questoin: typo\n---\nSystem.\n", encoding="utf-8")
    expect_error("ask", contract, "Who?", "-t", "bad", name="bad.txt", reason="header line 'questoin: typo'")


# -- the document on standard input ------------------------------------------------------------------------------

def test_document_from_stdin(home, tiny):
    model, prompts = tiny
    out = json.loads(ask(model, "-", "Who pays?", "--json", "--max-new-tokens", "2", input=CONTRACT).stdout)
    assert out["document"]["path"] == "<stdin>"
    assert out["document"]["sha256"] == load(str(write_contract(home / "c.txt"))).sha256  # the same text as from a file
    assert "Delaware" in prompts[-1] and "(<stdin>)" in prompts[-1]
    assert [d["path"] for d in json.loads(run("documents", "--json").stdout)] == ["<stdin>"]
    expect_error("ask", "-", "Who?", input="", name="<stdin>", reason="empty document")


def test_chat_document_from_stdin_reads_questions_from_the_terminal(home, tiny, monkeypatch):
    model, _ = tiny
    monkeypatch.setattr(cli_chat, "terminal_input", lambda: None)
    expect_error("chat", "-", "--model", model, input=CONTRACT, name="<stdin>", reason="reads questions from the terminal")
    questions = iter(["Who pays?"])

    def from_tty(prompt):
        try:
            return next(questions)
        except StopIteration:
            raise EOFError from None
    monkeypatch.setattr(cli_chat, "terminal_input", lambda: from_tty)
    run("chat", "-", "--model", model, *KNOBS, "--max-new-tokens", "2", input=CONTRACT)
    assert [r["question"] for r in store.recent_answers(store.open_db(), 5)] == ["Who pays?"]


# -- ask -c ------------------------------------------------------------------------------------------------------

def test_ask_continue_and_session(home, tiny, contract):
    model, prompts = tiny
    first = json.loads(ask(model, contract, "Who pays for delivery?", "--json", "--max-new-tokens", "3").stdout)
    assert first["session_id"]
    second = json.loads(ask(model, "-c", "And when is payment due?", "--json", "--max-new-tokens", "3").stdout)
    assert second["session_id"] == first["session_id"] and second["history_turns"] == 1
    assert "Who pays for delivery?" in prompts[-1] and "And when is payment due?" in prompts[-1]
    assert second["document"]["sha256"] == first["document"]["sha256"]
    text = ask(model, "--session", first["session_id"], "Anything else?", "--max-new-tokens", "2")
    assert f"Continuing session {first['session_id']}" in text.stderr
    hist = store.recent_answers(store.open_db(), 10, first["session_id"])
    assert [a["question"] for a in hist][::-1] == ["Who pays for delivery?", "And when is payment due?",
                                                    "Anything else?"]
    # chat -c continues what ask started
    chat = run("chat", "-c", "--model", model, *KNOBS, "--max-new-tokens", "2", input="One more?\n")
    assert f"Continuing session {first['session_id']}" in chat.stdout and "(3 earlier turns)" in chat.stdout
    expect_error("ask", "-c", contract, "Who?", reason="with -c/--session give only the question")
    expect_error("ask", reason="give a FILE (- for standard input), or -c / --session ID")


def test_ask_continue_without_a_session(home):
    expect_error("ask", "-c", "Who?", reason="no earlier chat session to continue")
    assert db_counts(home)["answers"] == 0


# -- --max-new-tokens, and -n for one more release ----------------------------------------------------------------

def test_max_new_tokens_and_the_old_n(home, tiny, contract):
    model, _ = tiny
    new = ask(model, contract, "Who?", "--json", "--max-new-tokens", "3")
    assert json.loads(new.stdout)["tokens"]["new"] == 3 and "deprecated" not in new.stderr
    old = ask(model, contract, "Who?", "--json", "-n", "2")
    assert json.loads(old.stdout)["tokens"]["new"] == 2
    assert "`docreader ask -n` is deprecated" in old.stderr and "--max-new-tokens 2" in old.stderr
    chat = run("chat", contract, "--model", model, *KNOBS, "-n", "2", input="Who?\n")
    assert "`docreader chat -n` is deprecated" in chat.stderr
    assert store.recent_answers(store.open_db(), 1)[0]["new_tokens"] == 2
    expect_error("ask", contract, "Who?", "-n", "2", "--max-new-tokens", "3", reason="give --max-new-tokens only")


# -- --json-stream, stop reasons ----------------------------------------------------------------------------------

def test_json_stream_events(home, tiny, contract):
    model, _ = tiny
    lines = ask(model, contract, "Who pays?", "--json-stream", "--max-new-tokens", "5").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "answer" and kinds.count("token") >= 1
    assert set(kinds) <= {"start", "prefill", "token", "answer"}
    start, answer = events[0], events[-1]["answer"]
    assert start["question"] == "Who pays?" and start["session_id"] == answer["session_id"]
    assert start["document"]["sha256"] == answer["document"]["sha256"]
    assert "".join(e["text"] for e in events if e["event"] == "token").strip() == answer["answer"]
    assert answer["stop_reason"] == "max_tokens" and answer["spans"] and answer["id"]
    expect_error("ask", contract, "Who?", "--json", "--json-stream", reason="give --json or --json-stream")


def test_a_cut_answer_says_so(home, tiny, contract):
    model, _ = tiny
    out = ask(model, contract, "Who pays?", "--max-new-tokens", "3").stdout
    assert "[cut off: the answer reached --max-new-tokens 3; it is incomplete]" in out and "stop: max_tokens" in out


@pytest.fixture
def keyboard_sigint():
    """Ctrl-C raising KeyboardInterrupt, as in a terminal, whatever an earlier test in this process left behind
    (the handler a test process starts with is not always Python's default)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_generate_stop_reasons(tokenizer, tmp_path_factory, keyboard_sigint):
    reader = Reader(str(tiny_model_dir(tmp_path_factory.mktemp("models"))), TINY_DSA)
    lm = reader.lm
    ids = tokenizer("Hello there, how are you?", add_special_tokens=False)["input_ids"]
    assert generate(lm.model, lm.tokenizer, ids, 4).stop_reason == "max_tokens"
    pieces = []

    def ctrl_c(piece):  # a real SIGINT, as from the keyboard, while the answer streams
        pieces.append(piece)
        if len(pieces) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    gen = generate(lm.model, lm.tokenizer, ids, 40, on_text=ctrl_c, interruptible=True)
    assert gen.stop_reason == "interrupted" and gen.new_tokens < 40
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back
    with pytest.raises(KeyboardInterrupt):  # not interruptible: Ctrl-C is Ctrl-C
        pieces.clear()
        generate(lm.model, lm.tokenizer, ids, 40, on_text=ctrl_c)


# -- chat: several lines, line editing, Ctrl-C ----------------------------------------------------------------------

def lines_of(*lines):
    it = iter(lines)

    def ask(prompt):
        try:
            line = next(it)
        except StopIteration:
            raise EOFError from None
        if isinstance(line, BaseException):
            raise line
        return line
    return ask


def test_read_question_over_several_lines():
    read = cli_chat.read_question
    assert read(lines_of("one line")) == "one line"
    assert read(lines_of("first \\", "second \\", "third")) == "first \nsecond \nthird"
    assert read(lines_of('"""', "a pasted", "passage", '"""')) == "a pasted\npassage"
    assert read(lines_of('"""Start here', "and end here"'"""')) == "Start here\nand end here"
    assert read(lines_of('"""all on one line"""')) == "all on one line"
    assert read(lines_of()) is None
    with pytest.raises(KeyboardInterrupt):
        read(lines_of("half \\", KeyboardInterrupt()))


def test_line_editing_keeps_a_history(tmp_path):
    import readline
    path = tmp_path / "chat_history"
    path.write_text("an old question\n", encoding="utf-8")
    readline.clear_history()
    editing = cli_chat.LineEditing(path, interactive=True)
    assert readline.get_current_history_length() == 1 and readline.get_history_item(1) == "an old question"
    readline.add_history("a new question")
    editing.save()
    assert path.read_text(encoding="utf-8").splitlines()[-2:] == ["an old question", "a new question"]
    readline.clear_history()
    cli_chat.LineEditing(tmp_path / "other", interactive=False).save()  # not a terminal: no history file
    assert not (tmp_path / "other").exists()


def test_chat_multiline_and_ctrl_c_keep_the_session(home, tiny, contract, monkeypatch):
    model, prompts = tiny
    from docreader import cli
    real_stream, calls = cli._stream, []

    def stream(piece):  # Ctrl-C while the first answer streams
        calls.append(piece)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        real_stream(piece)

    monkeypatch.setattr(cli, "_stream", stream)
    result = run("chat", contract, "--model", model, *KNOBS, "--max-new-tokens", "30",
                 input='"""\nWho pays\nfor delivery?\n"""\nAnd the law \\\nthat governs?\n')
    assert "[interrupted: the answer stops here]" in result.stdout
    rows = store.recent_answers(store.open_db(), 10)[::-1]
    assert [r["question"] for r in rows] == ["Who pays\nfor delivery?", "And the law \nthat governs?"]
    assert len({r["session_id"] for r in rows}) == 1 and rows[0]["new_tokens"] < 30
    assert rows[0].get("stop_reason", "interrupted") == "interrupted"
    assert "Who pays\nfor delivery?" in prompts[-1]  # the interrupted turn stays in the conversation


def test_chat_loop_ctrl_c_at_the_prompt_and_before_the_answer(capsys):
    asked = []

    class Ans:
        dropped_turns, history_digest, text = 0, "", "ok"

    def answer(q):
        asked.append(q)
        if q == "slow?":
            raise KeyboardInterrupt  # e.g. during a long prefill
        return Ans()

    history = []
    cli_chat.chat_loop(history, lines_of(KeyboardInterrupt(), "slow?", "fine?", "exit", "after?"), answer)
    assert asked == ["slow?", "fine?"] and history == [("fine?", "ok")]
    err = capsys.readouterr().err
    assert "(Ctrl-D or 'exit' to stop)" in err and "interrupted before the answer began" in err


# -- a conversation's window and RoPE factor, chosen up front -------------------------------------------------------

def test_rope_factor_is_chosen_up_front_and_kept(tokenizer, tmp_path_factory):
    """The tiny model's native window is 2,048 tokens; a history of ~3,300 tokens would need YaRN ×2 (and the
    document read again) if each prompt chose its own factor. With a turn budget the window stays and older
    turns become a digest."""
    doc = load(str(write_contract(tmp_path_factory.mktemp("doc") / "c.txt")))
    model = str(tiny_model_dir(tmp_path_factory.mktemp("models")))
    long_turns = [(f"Question {i} " + "about the notice clause " * 60, "Answer: " + "ninety days " * 60)
                  for i in range(8)]
    reader = Reader(model, TINY_DSA, disk_cache=False, turn_budget=512)
    a1 = reader.ask(doc, "Who pays?", max_new_tokens=2, log=False)
    a2 = reader.ask(doc, "And then?", history=long_turns, max_new_tokens=2, log=False)
    assert a1.rope_factor == a2.rope_factor == 1.0 and a1.context_window == a2.context_window == 2048
    assert a2.timings["prefix_cache"] == "memory" and a2.dropped_turns >= 1  # the document was not read again
    note = reader.context_note(doc, 2)
    assert "2,048-token window with native RoPE" in note and "512-token turn budget" in note
    big = Reader(model, TINY_DSA, disk_cache=False, turn_budget=3000)  # a budget past the native window
    b = big.ask(doc, "Who pays?", max_new_tokens=2, log=False)
    assert b.rope_factor > 1.0 and b.context_window == int(2048 * b.rope_factor)
    assert "(YaRN)" in big.context_note(doc, 2)


def test_chat_says_which_window_it_chose(home, tiny, contract):
    model, _ = tiny
    result = run("chat", contract, "--model", model, *KNOBS, "--max-new-tokens", "2", "--turn-budget", "100",
                 input="Who?\n")
    assert "note: a 2,048-token window with native RoPE for this conversation" in result.stderr
    assert "100-token turn budget" in result.stderr


# -- page numbers: the PDF's own labels, else the number printed on the page -----------------------------------------

def test_pdf_printed_page_numbers(tmp_path):
    pages = corpus.page_texts(3)
    pages[0] += "\nPage -13-"
    pages[1] += "\nPage -14-"
    doc = load(str(corpus.make_pdf(tmp_path / "filing.pdf", pages)))
    regions = [r for r in doc.regions if r.kind == "page"]
    assert [r.label for r in regions] == ["p. 13 (PDF page 1)", "p. 14 (PDF page 2)", "PDF page 3"]
    assert [r.meta for r in regions][:2] == [{"page": 1, "page_label": "13"}, {"page": 2, "page_label": "14"}]
    at = doc.text.index("Page 2 heading")
    loc = doc.locate(at, at + 10)
    assert (loc["page"], loc["page_label"], loc["label"]) == (2, "14", "p. 14 (PDF page 2)")
    # numbers that do not rise are not page numbers; a PDF's own labels win over printed ones
    pages[1] = pages[1].replace("Page -14-", "Page -3-")
    doc = load(str(corpus.make_pdf(tmp_path / "odd.pdf", pages)))
    assert [r.label for r in doc.regions if r.kind == "page"] == ["p. 1", "p. 2", "p. 3"]
    doc = load(str(corpus.make_pdf(tmp_path / "labelled.pdf", pages, roman_front=1)))
    assert [r.label for r in doc.regions if r.kind == "page"] == ["p. i", "p. 1", "p. 2"]


def test_page_index_and_printed_label_in_json(home, tiny, tmp_path):
    model, _ = tiny
    pages = [p + f"\n- {i + 7} -" for i, p in enumerate(corpus.page_texts(3))]
    pdf = corpus.make_pdf(tmp_path / "report.pdf", pages)
    out = json.loads(ask(model, pdf, "Which law?", "--json", "--max-new-tokens", "2").stdout)
    one_page = [s for s in out["spans"] if "page_end" not in s]
    assert one_page
    for s in one_page:
        assert s["label"] == f"p. {s['page'] + 6} (PDF page {s['page']})" and s["page_label"] == str(s["page"] + 6)
