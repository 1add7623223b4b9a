"""Long prompts: prefill in chunks (same tokens as one forward), its progress reports and the CLI's bar, caches
sized once for prompt + answer, and which dtype the K/V cache takes."""

from __future__ import annotations

import io

import pytest
import torch

import dsa
from docreader import generate as gen_mod
from docreader.cli import prefill_bar
from docreader.errors import DocreaderError
from docreader.generate import generate, kv_dtype, prefill_chunk
from test_dsa import small


@pytest.fixture(scope="module")
def tiny_dsa(tokenizer):
    """A tiny random Llama over the default model's vocabulary with DSA attached (a 300-token prompt is
    many times its sparse budget, so chunks really select)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    model.config._attn_implementation = "sdpa"
    return dsa.attach(model, small())


def _prompt(n: int) -> list[int]:
    return torch.randint(200, 40_000, (n,), generator=torch.Generator().manual_seed(n)).tolist()


def test_chunked_prefill_gives_the_one_shot_tokens(tiny_dsa, tokenizer):
    ids = _prompt(300)
    one_shot = generate(tiny_dsa, tokenizer, ids, max_new_tokens=12, repetition_penalty=1.0, chunk=4096)
    for chunk in (7, 64, 299):
        got = generate(tiny_dsa, tokenizer, ids, max_new_tokens=12, repetition_penalty=1.0, chunk=chunk)
        assert got.token_ids == one_shot.token_ids, chunk


def test_prefill_reports_progress_per_chunk(tiny_dsa, tokenizer):
    calls = []
    generate(tiny_dsa, tokenizer, _prompt(150), max_new_tokens=2, chunk=64, on_prefill=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 150), (64, 150), (128, 150), (150, 150)]
    cache = dsa.new_cache(tiny_dsa)
    generate(tiny_dsa, tokenizer, _prompt(150)[:100], max_new_tokens=2, cache=cache)
    cache.crop(80)  # a kept prefix: only the rest is prefilled, and reported
    calls.clear()
    generate(tiny_dsa, tokenizer, _prompt(150), max_new_tokens=2, cache=cache, chunk=64,
             on_prefill=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 70), (64, 70), (70, 70)]


def test_generate_sizes_the_cache_once(tiny_dsa, tokenizer):
    """A cache given to generate is reserved for prompt + every new token before the prefill: no buffer moves
    while prefilling in chunks or decoding."""
    cache = dsa.new_cache(tiny_dsa)
    moves = []
    layer = cache.layers[1]._k
    real_append = layer.append

    def append(x):
        before = layer.buf.data_ptr() if layer.buf is not None else None
        out = real_append(x)
        if before is not None and layer.buf.data_ptr() != before:
            moves.append(layer.length)
        return out

    layer.append = append
    generate(tiny_dsa, tokenizer, _prompt(300), max_new_tokens=20, repetition_penalty=1.0, chunk=64, cache=cache)
    assert moves == [] and layer.buf.shape[-2] == 320


def test_prefill_chunk_from_env(monkeypatch):
    assert prefill_chunk() == 8192
    monkeypatch.setenv("DOCREADER_PREFILL_CHUNK", "512")
    assert prefill_chunk() == 512
    monkeypatch.setenv("DOCREADER_PREFILL_CHUNK", "0")
    with pytest.raises(DocreaderError, match="DOCREADER_PREFILL_CHUNK"):
        prefill_chunk()


def test_kv_dtype_is_bf16_only_past_the_fp32_budget(tiny_dsa, monkeypatch):
    per_token = gen_mod.kv_bytes(tiny_dsa, 1)
    assert per_token == 3 * 2 * 2 * 8 * 4  # layers x K and V x KV heads x head dim x fp32
    fits = gen_mod.KV_FP32_MAX_BYTES // per_token
    assert kv_dtype(tiny_dsa, fits) is None  # within the budget: the model's dtype, as before
    assert kv_dtype(tiny_dsa, fits + 1) == torch.bfloat16
    monkeypatch.setenv(gen_mod.KV_DTYPE_ENV, "float32")
    assert kv_dtype(tiny_dsa, fits + 1) == torch.float32
    monkeypatch.setenv(gen_mod.KV_DTYPE_ENV, "bfloat16")
    assert kv_dtype(tiny_dsa, 1) == torch.bfloat16
    monkeypatch.setenv(gen_mod.KV_DTYPE_ENV, "fp8")
    with pytest.raises(DocreaderError, match=gen_mod.KV_DTYPE_ENV):
        kv_dtype(tiny_dsa, 1)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_for_long_prefills():
    assert prefill_bar(stream=io.StringIO()) is None  # not a terminal: quiet
    assert prefill_bar(json_out=True, stream=_Terminal()) is None  # --json: quiet
    term = _Terminal()
    bar = prefill_bar(stream=term)
    bar(0, 100)
    bar(100, 100)  # done in one chunk: nothing to show
    assert term.getvalue() == ""
    for done in (0, 8192, 16384, 20000):
        bar(done, 20000)
    out = term.getvalue()
    assert "8,192/20,000 tokens" in out and "16,384/20,000 tokens" in out and "left)" in out and " tok/s" in out
    assert out.endswith("\r\x1b[K") and "\n" not in out  # erased at the end, before the answer streams


@pytest.mark.integration
def test_reader_answers_and_cites_the_same_in_chunks(model_home, irc_file, monkeypatch):
    """The real model on a ~600-token document: prefilled in chunks, the answer and its spans (the
    selections recorded for the question's tokens, split by a chunk boundary) are those of one forward."""
    from docreader.engine import Reader
    from docreader.loaders import load
    knobs = {"top_k": 96, "n_blocks": 4, "local_window": 32}
    doc = load(str(irc_file))
    q = "Who buys music off iTunes?"
    one = Reader(None, knobs).ask(doc, q, max_new_tokens=8, log=False)
    reader = Reader(None, knobs)
    q0, q1 = reader.prompt(doc, q).question_span
    assert q1 - q0 > 4
    chunk = q0 // 3 + 1  # three chunks end inside the question
    monkeypatch.setenv("DOCREADER_PREFILL_CHUNK", str(chunk))
    calls = []
    chunked = reader.ask(doc, q, max_new_tokens=8, log=False, on_prefill=lambda d, t: calls.append(d))
    assert calls[:4] == [0, chunk, 2 * chunk, 3 * chunk] and q0 < 3 * chunk < q1
    assert chunked.text == one.text
    assert [(s.char_start, s.char_end) for s in chunked.spans] == [(s.char_start, s.char_end) for s in one.spans]
    # scores move by float noise only (chunks round differently; up to 4e-4 relative with the scalar kernel)
    assert [s.score for s in chunked.spans] == pytest.approx([s.score for s in one.spans], rel=1e-3, abs=1e-6)
