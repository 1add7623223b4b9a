"""Greedy generation with streaming, a DSA cache, and timings: prefill in chunks, then one token at a time.

A long prompt is prefilled `DOCREADER_PREFILL_CHUNK` tokens per forward (default 8,192) through the cache: one
forward over a 256k-token book would hold gigabytes of activations (the MLP's alone are ~3 GB per 100k tokens
for the default model), a chunk's are bounded. Each chunk keeps only its last position's logits.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

import dsa
from dsa import graph_decode

from .errors import DocreaderError
from .loaders.limits import env_count
from .quote_guide import QuoteGuide

PREFILL_CHUNK_ENV = "DOCREADER_PREFILL_CHUNK"
DEFAULT_PREFILL_CHUNK = 8192
KV_DTYPE_ENV = "DOCREADER_KV_DTYPE"  # auto (default) | float32 | bfloat16
GRAPHS_ENV = "DOCREADER_CUDA_GRAPHS"  # 1 (default): decode on a GPU through one CUDA graph per token; 0: eager
KV_FP32_MAX_BYTES = 4 << 30  # fp32 K/V up to 4 GiB (~93k tokens of the default model), bf16 past it
Progress = Callable[[int, int], None]  # (prompt tokens prefilled so far, prompt tokens to prefill)
# Why an answer ended: the model said it was done, it hit max_new_tokens (the text is cut), or the user
# stopped it (Ctrl-C in `docreader chat`). The names are the ones --json, the log and the text output show.
STOP_REASONS = ("eos", "max_tokens", "interrupted")


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    stop_reason: str  # STOP_REASONS: why the answer ended
    timings: dict = field(default_factory=dict)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.decode_s > 0 and self.new_tokens > 1 else 0.0


_STOPS: dict[tuple, frozenset[int]] = {}  # get_vocab() builds a 49k-entry dict: 70 ms of every served answer


def stop_ids(model, tokenizer) -> frozenset[int]:
    key = (tokenizer.name_or_path, len(tokenizer), str(model.generation_config.eos_token_id
                                                       if model.generation_config else None))
    if key not in _STOPS:
        _STOPS[key] = frozenset(_stop_ids(model, tokenizer))
    return _STOPS[key]


def _stop_ids(model, tokenizer) -> set[int]:
    ids = set()
    eos = model.generation_config.eos_token_id if model.generation_config else None
    for e in (eos if isinstance(eos, list) else [eos]) + [tokenizer.eos_token_id]:
        if e is not None:
            ids.add(int(e))
    vocab = tokenizer.get_vocab()
    for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        # by vocabulary membership, not "!= unk_token_id": SmolLM2's unk token *is* <|endoftext|>
        if tok in vocab:
            ids.add(int(vocab[tok]))
    return ids


REPETITION_PENALTY = 1.2
_EXEMPT: dict[tuple, frozenset[int]] = {}


def exempt_ids(tokenizer) -> frozenset[int]:
    """Tokens the repetition penalty leaves alone: digits, punctuation and whitespace. Numbers, dates and
    passkeys repeat their characters ("7372", "1.1.2"), and penalising them made the model miscopy them."""
    key = (tokenizer.name_or_path, len(tokenizer))
    if key not in _EXEMPT:
        vocab = tokenizer.get_vocab()
        _EXEMPT[key] = frozenset(i for t, i in vocab.items()
                                 if not any(c.isalpha() for c in t.replace("\u0120", "").replace("\u010a", "")))
    return _EXEMPT[key]


NO_REPEAT_NGRAM = 8


def pick(logits: torch.Tensor, new: list[int], penalty: float, exempt: frozenset[int] = frozenset(),
         no_repeat: int = NO_REPEAT_NGRAM, guide: QuoteGuide | None = None, text: str = "") -> int:
    """Greedy choice under `penalized`'s loop guards; with a `guide`, its choice given the answer's `text` so far."""
    scores = penalized(logits, new, penalty, exempt, no_repeat)
    return guide.choose(scores, text) if guide is not None else int(scores.argmax())


def penalized(logits: torch.Tensor, new: list[int], penalty: float, exempt: frozenset[int] = frozenset(),
              no_repeat: int = NO_REPEAT_NGRAM) -> torch.Tensor:
    """The scores with two loop guards on the answer so far (never on the prompt, so quoting the
    document is not penalised; small models otherwise loop on one sentence): a repetition penalty on its
    word tokens, and no `no_repeat`-token sequence twice (this one also stops "2017 2017 2017 …", which
    the penalty leaves alone because numbers must be copyable)."""
    seen = sorted(set(new) - exempt)
    banned = repeats(new, no_repeat) if no_repeat else []
    if (penalty != 1.0 and seen) or banned:
        logits = logits.clone()
    if penalty != 1.0 and seen:
        idx = torch.tensor(seen)
        v = logits[idx]
        logits[idx] = torch.where(v > 0, v / penalty, v * penalty)
    if banned:
        logits[torch.tensor(banned)] = float("-inf")
    return logits


def repeats(new: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram the answer already contains."""
    if len(new) < n:
        return []
    tail = new[len(new) - n + 1 :]
    return sorted({new[i + n - 1] for i in range(len(new) - n + 1) if new[i : i + n - 1] == tail})


def prefill_chunk() -> int:
    """Tokens per prefill forward: $DOCREADER_PREFILL_CHUNK, else 8,192."""
    return env_count(PREFILL_CHUNK_ENV, DEFAULT_PREFILL_CHUNK, "tokens")


def kv_bytes(model, tokens: int, itemsize: int = 4) -> int:
    """Bytes of K and V for `tokens` tokens over every layer, at `itemsize` bytes a value."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return tokens * c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim * itemsize


def kv_dtype(model, tokens: int) -> torch.dtype | None:
    """How a DSA cache for `tokens` (prompt + new tokens) stores the sparse layers' K/V: the model's own dtype while
    fp32 K/V stay within KV_FP32_MAX_BYTES, bfloat16 past that (half the memory: ~6 instead of 12 GB at 256k
    tokens for the default model). Not bf16 always: on a 16k-token prompt bf16 K/V moved the first answer
    token's logits by 0.47 and changed the greedy answer after 15 tokens, where a different prefill chunk moved
    them by 1e-4 (bench/RESULTS-speed.md). $DOCREADER_KV_DTYPE (float32 | bfloat16) forces one."""
    raw = os.environ.get(KV_DTYPE_ENV, "auto").strip().lower() or "auto"
    if raw not in ("auto", "float32", "bfloat16"):
        raise DocreaderError(f"{KV_DTYPE_ENV} must be auto, float32 or bfloat16, got {raw!r}")
    if raw != "auto":
        return getattr(torch, raw)
    return torch.bfloat16 if kv_bytes(model, tokens) > KV_FP32_MAX_BYTES else None


def prefill(model, ids: torch.Tensor, cache, chunk: int, on_progress: Progress | None = None):
    """ids [1, n] through the model `chunk` tokens per forward, appended to `cache` (None: the model makes one)
    -> (the last position's logits [V], the cache). on_progress(done, n) before the first chunk (done = 0) and
    after each one."""
    n = ids.shape[1]
    out = None
    if on_progress:
        on_progress(0, n)
    for start in range(0, n, chunk):
        out = model(ids[:, start : start + chunk], **dsa.cache_arg(cache), use_cache=True, logits_to_keep=1)
        cache = dsa.output_cache(out)
        if on_progress:
            on_progress(min(start + chunk, n), n)
    return out.logits[0, -1], cache


@contextmanager
def stop_on_sigint(enabled: bool) -> Iterator[threading.Event]:
    """An event set by Ctrl-C while the block runs (the previous SIGINT handler comes back after it). The decode
    loop checks it between two forwards: a KeyboardInterrupt raised inside a forward could leave some layers'
    K/V one token longer than others, and the document's cache is kept for the next turn. Off (a never-set
    event) when not `enabled` or outside the main thread, where signal handlers cannot be installed."""
    stop = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def graphs(model) -> bool:
    """Decode through CUDA graphs? On a GPU, with DSA, unless $DOCREADER_CUDA_GRAPHS is 0."""
    on_gpu = next(model.parameters()).device.type == "cuda"
    return on_gpu and dsa.is_attached(model) and os.environ.get(GRAPHS_ENV, "1") != "0"


def decoder(model, cache, capacity: int) -> Callable[[int], torch.Tensor]:
    """token id -> the next token's logits [vocab], the cache holding the token afterwards. On a GPU with a DSA cache
    a `dsa.graph_decode.GraphDecoder` (a CUDA graph per step: at batch 1 an eager step is bound by kernel launches,
    bench/RESULTS-speed.md), unless $DOCREADER_CUDA_GRAPHS is 0; else one eager forward."""
    dev = next(model.parameters()).device
    if graphs(model) and isinstance(cache, dsa.DSACache):
        return graph_decode.GraphDecoder(model, cache, capacity).step
    return lambda tok: model(torch.tensor([[tok]], device=dev), **dsa.cache_arg(cache), use_cache=True).logits[0, -1]


@torch.inference_mode()
def generate(model, tokenizer, input_ids: list[int], max_new_tokens: int = 256,
             on_text: Callable[[str], None] | None = None, cache=None,
             repetition_penalty: float = REPETITION_PENALTY, on_prefill: Progress | None = None,
             chunk: int | None = None, interruptible: bool = False, guide: QuoteGuide | None = None) -> Generation:
    """Greedy decode; `on_text` receives each new piece of text as soon as it is decodable, `on_prefill` the
    prefill's progress (tokens done, tokens to do) after each chunk of `chunk` tokens (default `prefill_chunk()`).
    `interruptible`: Ctrl-C (SIGINT) while decoding ends the answer after the current token (stop_reason
    "interrupted") instead of raising, so a chat keeps its session and its cache; during the prefill it still
    raises KeyboardInterrupt (there is no answer yet). `guide`: keeps `Quote: "..."` lines the document's words
    (docreader.quote_guide); None: plain greedy.

    `cache` may already hold a prefix of `input_ids` (e.g. the document, kept from an earlier question);
    only the rest is prefilled. A DSA cache is made (or grown) once to hold the prompt and every new token."""
    stops = stop_ids(model, tokenizer)
    exempt = exempt_ids(tokenizer) if repetition_penalty != 1.0 else frozenset()
    total = len(input_ids) + max_new_tokens
    room = graph_decode.padded(total) if graphs(model) else total  # a GraphDecoder reads whole padded buffers
    if cache is None and dsa.is_attached(model):
        cache = dsa.new_cache(model, capacity=room, dtype=kv_dtype(model, total))
    if isinstance(cache, dsa.DSACache):
        cache.reserve(room)
    done = cache.get_seq_length() if cache is not None else 0
    if done >= len(input_ids):
        raise ValueError(f"the cache holds {done} tokens, the prompt only {len(input_ids)}")
    dev = next(model.parameters()).device
    ids = torch.tensor([input_ids[done:]], device=dev)
    t0 = time.perf_counter()
    logits, cache = prefill(model, ids, cache, chunk or prefill_chunk(), on_prefill)
    nxt = int(logits.argmax())
    prefill_s = time.perf_counter() - t0
    step = decoder(model, cache, total)
    new: list[int] = []
    shown = ""
    reason = "max_tokens"
    t1 = time.perf_counter()
    with stop_on_sigint(interruptible) as stop:
        for _ in range(max_new_tokens):
            if nxt in stops:
                reason = "eos"
                break
            new.append(nxt)
            text = tokenizer.decode(new, skip_special_tokens=True)
            if on_text and not text.endswith("\ufffd") and len(text) > len(shown):
                on_text(text[len(shown):])
                shown = text
            if stop.is_set():  # between two forwards: the cache holds exactly the prompt and the tokens so far
                reason = "interrupted"
                break
            if len(new) == max_new_tokens:
                break
            nxt = pick(step(nxt).cpu(), new, repetition_penalty, exempt, guide=guide, text=text)
    decode_s = time.perf_counter() - t1
    text = tokenizer.decode(new, skip_special_tokens=True)
    if on_text and len(text) > len(shown):
        on_text(text[len(shown):])
    return Generation(text.strip(), new, len(input_ids), prefill_s, decode_s, reason)
