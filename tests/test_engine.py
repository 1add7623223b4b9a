"""generate() on a tiny random model; Reader.ask with the real default model on a short real document
(integration)."""

from __future__ import annotations

import pytest

from conftest import db_counts
from docreader import models, store
from docreader.engine import Reader
from docreader.errors import DocreaderError
from docreader.generate import exempt_ids, generate, pick, repeats, stop_ids
from docreader.loaders import load

# Sparse knobs small enough that the ~525-token document is really selected from (not all of it attended)
KNOBS = {"top_k": 96, "n_blocks": 4, "local_window": 32}
NEW = 8


def span_key(spans):
    return [(s.rank, s.char_start, s.char_end) for s in spans]


# -- generate() on a tiny random Llama with the default model's tokenizer ------------------------------------

@pytest.fixture(scope="module")
def tiny(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


def test_stop_ids_include_endoftext(tiny, tokenizer):
    vocab = tokenizer.get_vocab()
    assert tokenizer.unk_token == "<|endoftext|>"  # the trap: SmolLM2's unk token is a real stop token
    assert {vocab["<|im_end|>"], vocab["<|endoftext|>"]} <= stop_ids(tiny, tokenizer)
    assert "<|eot_id|>" not in vocab and len(stop_ids(tiny, tokenizer)) == 2


def test_generate_streams_the_final_text(tiny, tokenizer):
    ids = tokenizer("Hello there, how are you?", add_special_tokens=False)["input_ids"]
    pieces = []
    gen = generate(tiny, tokenizer, ids, max_new_tokens=12, on_text=pieces.append)
    assert gen.stop_reason == "max_tokens" and gen.new_tokens == 12 and gen.prompt_tokens == len(ids)
    assert "".join(pieces).strip() == gen.text == tokenizer.decode(gen.token_ids, skip_special_tokens=True).strip()
    again = generate(tiny, tokenizer, ids, max_new_tokens=5)  # greedy: deterministic, a prefix of the longer run
    assert again.token_ids == gen.token_ids[:5]


def test_generate_stops_at_endoftext(tiny, tokenizer):
    import copy
    model = copy.deepcopy(tiny)
    model.lm_head.weight.data.zero_()  # every logit 0: argmax is token 0, <|endoftext|>
    gen = generate(model, tokenizer, [5, 6, 7], max_new_tokens=6, on_text=lambda t: pytest.fail("streamed " + t))
    assert (gen.stop_reason, gen.token_ids, gen.text) == ("eos", [], "")


def test_repetition_penalty_spares_digits_and_punctuation(tokenizer):
    import torch
    vocab = tokenizer.get_vocab()
    ex = exempt_ids(tokenizer)
    assert {vocab[d] for d in "0123456789"} | {vocab["."], vocab["\u0120"]} <= ex  # "Ġ" is a space
    assert vocab["the"] not in ex and vocab["\u0120the"] not in ex and vocab["\u0120State"] not in ex
    seven, the = vocab["7"], vocab["\u0120the"]
    logits = torch.zeros(len(tokenizer))
    logits[seven], logits[the] = 2.0, 2.0
    logits[vocab["x"]] = 1.9
    # "7" was already said: a penalty would let "x" win; the exemption keeps copying "7" possible
    assert pick(logits, [seven], 1.2, ex) == seven
    assert pick(logits, [seven], 1.2) == the
    assert pick(logits, [seven, the], 1.2, ex) == seven
    assert pick(logits, [seven, the], 1.2) == vocab["x"]


def test_no_repeated_ngram_even_of_digits():
    import torch
    assert repeats([1, 2, 3, 1, 2], 3) == [3] and repeats([1, 2, 3, 4], 3) == [] and repeats([5, 5, 5], 2) == [5]
    logits = torch.zeros(10)
    logits[7], logits[4] = 2.0, 1.0
    loop = [7, 7, 7]  # an exempt token (a digit) looping: the penalty spares it, the n-gram guard stops it
    assert pick(logits, loop, 1.2, frozenset({7}), no_repeat=4) == 7  # [7, 7, 7, 7] is not yet a repeat
    assert pick(logits, loop + [7], 1.2, frozenset({7}), no_repeat=4) == 4
    assert pick(logits, loop + [7], 1.2, frozenset({7}), no_repeat=0) == 7


# -- the real default model --------------------------------------------------------------------------------------

@pytest.mark.integration
def test_answer_logged_with_spans_and_prefix_cache_exact(model_home, irc_file):
    doc = load(str(irc_file))
    reader = Reader(None, KNOBS)
    q1, q2 = "Who buys music off iTunes?", "What link did monchichi post?"
    a1 = reader.ask(doc, q1, max_new_tokens=NEW)
    assert a1.text and a1.mode == "sparse" and a1.dsa["top_k"] == 96 and a1.dsa["n_blocks"] == 4
    assert a1.timings["cached_prefix_tokens"] == 0 and 1 <= a1.new_tokens <= NEW

    # spans quote the document; none reaches into the attention sink
    assert a1.spans and [s.rank for s in a1.spans] == list(range(1, len(a1.spans) + 1))
    p = reader.prompt(doc, q1)
    sink_chars = p.doc_offsets[max(0, a1.dsa["sink_tokens"] - p.doc_start)][0]
    for s in a1.spans:
        assert s.text == doc.text[s.char_start : s.char_end] and s.text.strip()
        assert s.char_start >= sink_chars
        assert s.location["message"] >= 1 and s.location["speaker"] and s.location["label"].startswith("message ")
        assert len([r for r in doc.regions_at(s.char_start, s.char_end) if r.kind == "message"]) == 1

    # logged: one answer with its spans, in one piece
    db = store.open_db()
    row = store.get_answer(db, a1.id)
    assert (row["question"], row["answer"], row["mode"]) == (q1, a1.text, "sparse")
    assert [(s["rank"], s["char_start"], s["char_end"]) for s in row["spans"]] == span_key(a1.spans)
    assert store.get_document(db, doc.sha256)["text"] == doc.text

    # a follow-up on the same Reader prefills only what follows the document …
    hist = [(q1, a1.text)]
    a2 = reader.ask(doc, q2, history=hist, max_new_tokens=NEW)
    assert a2.timings["cached_prefix_tokens"] == reader.prompt(doc, q2, hist).doc_end > 0
    # … and answers exactly as a fresh Reader (no cache) does
    fresh = Reader(None, KNOBS, disk_cache=False).ask(doc, q2, history=hist, max_new_tokens=NEW, log=False)
    assert fresh.timings["cached_prefix_tokens"] == 0
    assert a2.text == fresh.text and a2.new_tokens == fresh.new_tokens
    assert span_key(a2.spans) == span_key(fresh.spans)
    assert [s.score for s in a2.spans] == pytest.approx([s.score for s in fresh.spans], rel=1e-4, abs=1e-6)
    assert db_counts(model_home) == {"documents": 1, "sessions": 0, "answers": 2,
                                     "spans": len(a1.spans) + len(a2.spans)}


@pytest.mark.integration
def test_errors_write_nothing(model_home, irc_file, monkeypatch):
    reader = Reader(None, KNOBS)
    doc = load(str(irc_file))
    with pytest.raises(DocreaderError, match="the question is empty"):
        reader.ask(doc, "  ")
    monkeypatch.setattr(models, "MAX_YARN_FACTOR", 1)
    big = doc.text * 40  # ~21k tokens: over 8,192
    long_path = irc_file.with_name("long.txt")
    long_path.write_text(big, encoding="utf-8")
    base = Reader(models.BASE_MODEL, KNOBS)  # the default's delta has a fixed 262,144-token window
    with pytest.raises(DocreaderError, match=r"too long for the model: the document is [\d,]+ tokens") as e:
        base.ask(str(long_path), "Who?")
    assert e.value.path == str(long_path) and "8,192-token window" in str(e.value)
    assert db_counts(model_home) == {"documents": 0, "sessions": 0, "answers": 0, "spans": 0}


@pytest.mark.integration
def test_forced_window_is_not_counted_as_chosen(model_home, irc_file):
    """The last document tokens sit in every recorded query's forced local window: they are attended
    whatever the question, so the default record gives them no weight (the old record counted the window
    whole, and the document's end ranked first for every question)."""
    import dsa
    from docreader.provenance import SelectionAccumulator, record_ranges
    reader = Reader()
    lm = reader.lm
    doc = load(str(irc_file))
    p = reader.prompt(doc, "What was said last?", None, 2)
    acc = SelectionAccumulator(len(p.input_ids) + 2, ranges=record_ranges(p))
    with dsa.recording(lm.model, acc.recorder):
        generate(lm.model, lm.tokenizer, p.input_ids, 2)
    cfg = lm.model.dsa_state.config
    last = len(p.input_ids)  # the last recorded query (the second answer token's)
    lo = last - cfg.local_window + 1  # from here on every recorded query's window covers the token
    assert p.doc_start < lo < p.doc_end - 100  # a real stretch of document lies in every window
    assert acc.rows > 0 and float(acc.weights[: lo].sum()) > 0
    assert float(acc.weights[lo : p.doc_end].sum()) == 0.0
    assert float(acc.weights[p.question_span[0] : p.question_span[1]].sum()) == 0.0  # nor the question itself