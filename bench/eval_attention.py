"""The model directly: dense-attention provenance and answer log-probabilities.

`DenseAttentionProbe` hooks `DSAState.capture` (called by every layer with the post-RoPE query
[B, H, Lq, D] and key [B, Hkv, Lk, D]) and, for query positions at or after the end of the document,
accumulates softmax(q k^T / sqrt(D)) over keys, summed over heads, averaged over layers 1.. (layer 0 is
dense and diffuse, and the indexer does not report it either). Only those rows are computed, never the
full L x L matrix. The per-token weights then go through the same span merger as the indexer's
selections (`docreader.provenance.spans_from_weights`), so both kinds of spans have the same shape.

`answer_logprob` re-scores a fixed answer after a (possibly ablated) document: one forward pass.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class DenseAttentionProbe:
    def __init__(self, record_from: int, skip_layers: tuple[int, ...] = (0,)):
        self.record_from = record_from
        self.skip = set(skip_layers)
        self.weights = torch.zeros(1, dtype=torch.float64)
        self.rows = 0

    @torch.no_grad()
    def __call__(self, layer: int, x, query: torch.Tensor, key: torch.Tensor) -> None:
        if layer in self.skip:
            return
        B, H, Lq, D = query.shape
        Hkv, Lk = key.shape[1], key.shape[2]
        first = max(0, self.record_from - (Lk - Lq))  # first query row at/after record_from
        if first >= Lq:
            return
        q = query[0, :, first:].float()  # [H, n, D]
        k = key[0].float().repeat_interleave(H // Hkv, dim=0)  # [H, Lk, D]
        s = torch.matmul(q, k.transpose(1, 2)) * D**-0.5  # [H, n, Lk]
        qpos = torch.arange(Lk - Lq + first, Lk, device=s.device)
        s = s.masked_fill(torch.arange(Lk, device=s.device)[None, :] > qpos[:, None], float("-inf"))
        p = torch.softmax(s, dim=-1).sum(0) / H  # [n, Lk]
        if self.weights.shape[0] < Lk:
            self.weights = torch.cat([self.weights, torch.zeros(Lk - self.weights.shape[0] + 4096,
                                                                dtype=torch.float64)])
        self.weights[:Lk] += p.sum(0).double().cpu()
        self.rows += p.shape[0]


@contextmanager
def capturing(model, probe):
    state = model.dsa_state
    previous, state.capture = state.capture, probe
    try:
        yield probe
    finally:
        state.capture = previous


def prompt_for(lm, document, question: str, max_new_tokens: int):
    from docreader.prompt import build

    return build(lm.tokenizer, document, question, None, window=lm.context_window, max_new_tokens=max_new_tokens)


@torch.inference_mode()
def answer_logprob(lm, document, question: str, answer_ids: list[int], mode: str = "sparse") -> float:
    """log p(answer_ids | prompt(document, question)) under the model in `mode` (one full forward)."""
    import dsa
    from dsa.longctx import set_context

    if not answer_ids:
        return 0.0
    p = prompt_for(lm, document, question, len(answer_ids))
    ids = p.input_ids + list(answer_ids)
    model = lm.model
    set_context(model, len(ids))
    cfg = model.dsa_state.config
    previous = cfg.mode
    dsa.set_mode(model, mode)
    try:
        out = model(torch.tensor([ids], device=next(model.parameters()).device), **dsa.cache_arg(dsa.new_cache(model)), use_cache=True,
                    logits_to_keep=len(answer_ids) + 1)
    finally:
        dsa.set_mode(model, previous)
    logits = out.logits[0, :-1].float().cpu()  # predictions for each answer token
    lp = torch.log_softmax(logits, dim=-1)
    tgt = torch.tensor(answer_ids)
    return float(lp.gather(1, tgt[:, None]).sum())


def answer_ids(lm, text: str) -> list[int]:
    return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
