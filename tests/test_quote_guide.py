"""docreader.quote_guide: inside a `Quote: "` line the guide takes the best candidate that keeps the quote the
document's words, closes the quote when none does, and leaves every other token to the model; "spans" mode
starts quotes near the selected passages. Scores are built by hand over the real tokenizer's vocabulary."""

from __future__ import annotations

import pytest
import torch

from docreader.quote_guide import QuoteGuide, fold, folded_offsets

DOC = ("1. Term. This Agreement lasts five years.\n\n7. Governing Law. This Agreement is to be construed\n"
       "according to the laws of the State of Illinois.")


def tid(tokenizer, piece: str) -> int:
    ids = tokenizer.encode(piece, add_special_tokens=False)
    assert len(ids) == 1, (piece, ids)
    return ids[0]


def scores(tokenizer, ranked: list[str]) -> torch.Tensor:
    """Scores over the vocabulary with `ranked` pieces best first, everything else far below."""
    s = torch.full((len(tokenizer),), -100.0)
    for i, piece in enumerate(ranked):
        s[tid(tokenizer, piece)] = 10.0 - i
    return s


def test_outside_a_quote_the_model_chooses(tokenizer):
    g = QuoteGuide(tokenizer, DOC)
    s = scores(tokenizer, [" Ohio", " Illinois"])
    assert g.choose(s, "Answer: The laws of") == tid(tokenizer, " Ohio") and g.replaced == 0


def test_inside_a_quote_the_best_candidate_in_the_document(tokenizer):
    g = QuoteGuide(tokenizer, DOC)
    s = scores(tokenizer, [" Ohio", " Texas", " Illinois"])
    assert g.choose(s, 'Quote: "according to the laws of the State of') == tid(tokenizer, " Illinois")
    assert g.replaced == 1
    # a line break in the document is a space in the quote (whitespace folded)
    assert g.choose(scores(tokenizer, [" being", " according"]), 'Quote: "is to be construed') == tid(tokenizer, " according")


def test_first_word_must_be_in_the_document(tokenizer):
    g = QuoteGuide(tokenizer, DOC)
    assert g.choose(scores(tokenizer, ["Section", "State"]), 'Quote: "') == tid(tokenizer, "State")


def test_closes_when_nothing_fits_and_allows_closing(tokenizer):
    g = QuoteGuide(tokenizer, DOC)
    close = tid(tokenizer, '"')
    assert g.choose(scores(tokenizer, [" Ohio", " Texas"]), 'Quote: "the State of') == close
    assert g.choose(scores(tokenizer, ['"', " Illinois"]), 'Quote: "the State of Illinois') == close  # closing a fit
    assert g.choose(scores(tokenizer, ['"', " of"]), 'Quote: "') == tid(tokenizer, " of")  # never an empty quote


def test_a_quote_that_left_the_document_is_free(tokenizer):
    g = QuoteGuide(tokenizer, DOC)
    s = scores(tokenizer, [" Ohio", " Illinois"])
    assert g.choose(s, 'Quote: "The law of Delaware and') == tid(tokenizer, " Ohio") and g.replaced == 0


def test_long_quote_is_closed(tokenizer):
    g = QuoteGuide(tokenizer, DOC, max_chars=20)
    assert g.choose(scores(tokenizer, [" the"]), 'Quote: "according to the laws of') == tid(tokenizer, '"')


def test_spans_mode_starts_near_the_selected_passage(tokenizer):
    law = DOC.index("7. Governing")
    near_law = QuoteGuide(tokenizer, DOC, anchors=lambda: [(law, law + 40)], margin=5)
    # "This Agreement" is in both clauses: near the anchor it must go on as the governing-law clause does
    s = scores(tokenizer, [" lasts", " is"])
    assert near_law.choose(s, 'Quote: "This Agreement') == tid(tokenizer, " is")
    anywhere = QuoteGuide(tokenizer, DOC)
    assert anywhere.choose(s, 'Quote: "This Agreement') == tid(tokenizer, " lasts")
    # no first word near the anchor: anywhere in the document
    far = QuoteGuide(tokenizer, DOC, anchors=lambda: [(law, law + 10)], margin=0)
    assert far.choose(scores(tokenizer, ["Section", "Term"]), 'Quote: "') == tid(tokenizer, "Term")


@pytest.mark.parametrize("text", ["a  b\n\nc", " lead", "tail\t", "", "x"])
def test_folded_offsets(text):
    folded, offsets = fold(text), folded_offsets(text)
    assert len(offsets) == len(text) + 1 and offsets[-1] == len(folded)
    for i, ch in enumerate(text):
        if not ch.isspace():
            assert folded[offsets[i]] == ch


def test_offset_map_only_for_anchors(tokenizer, monkeypatch):
    """The default ("document") mode never builds the per-character offset map (0.3 s for a novel on a slow
    CPU, every answer); "spans" mode builds it once, when the first quote starts."""
    from docreader import quote_guide
    calls = []
    monkeypatch.setattr(quote_guide, "folded_offsets", lambda text: calls.append(1) or list(range(len(text) + 1)))
    g = QuoteGuide(tokenizer, DOC)
    g.choose(scores(tokenizer, ["Section", "Term"]), 'Quote: "')
    g.choose(scores(tokenizer, [" lasts"]), 'Quote: "This Agreement')
    assert calls == []
    law = DOC.index("7.")
    anchored = QuoteGuide(tokenizer, DOC, anchors=lambda: [(law, law + 10)])
    for _ in range(2):
        anchored.choose(scores(tokenizer, ["Section", "Term"]), 'Quote: "')
    assert calls == [1]
