"""Greedy generation with streaming, a DSA cache, and timings: prefill once, then one token at a time."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

import dsa


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    stop_reason: str  # "eos" | "length"
    timings: dict = field(default_factory=dict)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.decode_s > 0 and self.new_tokens > 1 else 0.0


def stop_ids(model, tokenizer) -> set[int]:
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
         no_repeat: int = NO_REPEAT_NGRAM) -> int:
    """Greedy choice with two loop guards on the answer so far (never on the prompt, so quoting the
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
    return int(logits.argmax())


def repeats(new: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram the answer already contains."""
    if len(new) < n:
        return []
    tail = new[len(new) - n + 1 :]
    return sorted({new[i + n - 1] for i in range(len(new) - n + 1) if new[i : i + n - 1] == tail})


@torch.inference_mode()
def generate(model, tokenizer, input_ids: list[int], max_new_tokens: int = 256,
             on_text: Callable[[str], None] | None = None, cache=None,
             repetition_penalty: float = REPETITION_PENALTY) -> Generation:
    """Greedy decode; `on_text` receives each new piece of text as soon as it is decodable.

    `cache` may already hold a prefix of `input_ids` (e.g. the document, kept from an earlier question);
    only the rest is prefilled."""
    stops = stop_ids(model, tokenizer)
    exempt = exempt_ids(tokenizer) if repetition_penalty != 1.0 else frozenset()
    if cache is None:
        cache = dsa.new_cache(model) if dsa.is_attached(model) else None
    done = cache.get_seq_length() if cache is not None else 0
    if done >= len(input_ids):
        raise ValueError(f"the cache holds {done} tokens, the prompt only {len(input_ids)}")
    dev = next(model.parameters()).device
    ids = torch.tensor([input_ids[done:]], device=dev)
    t0 = time.perf_counter()
    out = model(ids, **dsa.cache_arg(cache), use_cache=True, logits_to_keep=1)
    cache = dsa.output_cache(out)
    nxt = int(out.logits[0, -1].argmax())
    prefill_s = time.perf_counter() - t0
    new: list[int] = []
    shown = ""
    reason = "length"
    t1 = time.perf_counter()
    for _ in range(max_new_tokens):
        if nxt in stops:
            reason = "eos"
            break
        new.append(nxt)
        text = tokenizer.decode(new, skip_special_tokens=True)
        if on_text and not text.endswith("\ufffd") and len(text) > len(shown):
            on_text(text[len(shown):])
            shown = text
        if len(new) == max_new_tokens:
            break
        out = model(torch.tensor([[nxt]], device=dev), **dsa.cache_arg(cache), use_cache=True)
        nxt = pick(out.logits[0, -1].cpu(), new, repetition_penalty, exempt)
    decode_s = time.perf_counter() - t1
    text = tokenizer.decode(new, skip_special_tokens=True)
    if on_text and len(text) > len(shown):
        on_text(text[len(shown):])
    return Generation(text.strip(), new, len(input_ids), prefill_s, decode_s, reason)
