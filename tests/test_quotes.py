"""docreader.quotes: parsing the Quote/Answer format, and verifying quotes against the document (exact, folded,
hyphenated, fuzzy, absent), with offsets and locations mapped back to the source."""

from __future__ import annotations

import random

import pytest

from docreader import quotes
from docreader.document import Document, Region
from docreader.quotes import Parsed, parse, verify, verify_all

CONTRACT = ("SUPPLY AGREEMENT\n\n"
            "1. Term. This agreement starts on 1 March 2024 and runs for three years.\n"
            "2. Notice. Either party may end it with ninety (90) days written notice of termi-\nnation.\n"
            "3. Governing law. This agreement is governed by the laws of the State of Delaware.\n"
            "4. Payment. Invoices are due within 30 days of receipt.\n"
            "5. Assignment. The Distributor shall not assign this agreement without consent.\n")


def doc(text: str = CONTRACT) -> Document:
    return Document("contract.txt", "txt", text)


# -- parse ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ('Quote: "The term is three years."\nQuote: "Notice is 90 days."\nAnswer: Three years.',
     Parsed("Three years.", ["The term is three years.", "Notice is 90 days."], False)),
    ("Answer: The document does not say.", Parsed("The document does not say.", [], True)),
    ("Three years, renewable.", Parsed("Three years, renewable.", [], False)),  # no format at all
    ("The term is three years.\nQuote: runs for three years", Parsed("The term is three years.", ["runs for three years"], False)),
    ("Quote: “curly quotes”\nQuote: ‘single ones’\nAnswer: x", Parsed("x", ["curly quotes", "single ones"], False)),
    ('Quote: "runs for three years..."\nAnswer: 3', Parsed("3", ["runs for three years"], False)),
    ('Quote: "…the middle of a sentence…"\nAnswer: 3', Parsed("3", ["the middle of a sentence"], False)),
    ('quote:"no space, lower case"\nANSWER:  yes ', Parsed("yes", ["no space, lower case"], False)),
    ('**Quote:** "bold labels"\n**Answer:** fine', Parsed("fine", ["bold labels"], False)),
    ('Quote: "over two\nlines"\nAnswer: ok', Parsed("ok", ["over two\nlines"], False)),
    ('Quote: "cut off by max tokens, mid-way', Parsed("", ["cut off by max tokens, mid-way"], False)),
    ('Quote: "cut off\nmid-way', Parsed("", ["cut off\nmid-way"], False)),
    ('Quote: ""\nQuote: "..."\nAnswer: Nothing quoted.', Parsed("Nothing quoted.", [], False)),
    ("Answer: Three years.\nIt can be renewed.", Parsed("Three years.\nIt can be renewed.", [], False)),
    ("", Parsed("", [], False)),
])
def test_parse(text, expected):
    assert parse(text) == expected


def test_parse_absent_uses_the_shared_heuristic():
    from bench import eval_metrics
    assert eval_metrics.says_absent is quotes.says_absent  # one heuristic, bench imports it from docreader
    assert parse('Quote: "x"\nAnswer: This is not specified in the contract.').absent
    assert not parse("Answer: The Distributor shall not assign the agreement.").absent


# -- verify ---------------------------------------------------------------------------------------------

def check(q, d: Document, passage: str | None = None):
    """Verified, and its offsets give back exactly the passage it matched."""
    assert q.verified, q
    assert 0 <= q.char_start < q.char_end <= len(d.text)
    if passage is not None:
        assert d.text[q.char_start : q.char_end] == passage
    assert q.location["char_start"] == q.char_start and q.location["label"]


def test_exact():
    d = doc()
    q = verify("This agreement starts on 1 March 2024", d)
    check(q, d, "This agreement starts on 1 March 2024")
    assert q.score == 100.0 and q.location["line"] == 3 and q.location["label"] == "line 3"


@pytest.mark.parametrize("quote,passage", [
    ("this AGREEMENT   starts on 1 march 2024", "This agreement starts on 1 March 2024"),  # case, whitespace
    ("either party may end it with ninety (90) days written notice of termination",  # line-break hyphenation
     "Either party may end it with ninety (90) days written notice of termi-\nnation"),
    ("Governing law — This agreement is governed", "Governing law. This agreement is governed"),  # dashes, punctuation
    ("The Distributor shan’t", None),  # (negation spelled differently: not verified, see below)
])
def test_folded(quote, passage):
    d = doc()
    q = verify(quote, d)
    if passage is None:
        assert not q.verified
        return
    check(q, d, passage)
    assert q.score == 100.0


def test_curly_quotes_and_ligatures_in_the_document():
    d = doc("He said “it’s the ﬁnal offer” and left.\n")
    check(verify("it's the final offer", d), d, "it’s the ﬁnal offer")


@pytest.mark.parametrize("quote", [
    "governed by the lavvs of the State of Delavare",  # PDF/OCR-mangled letters
    "This agreement is goverened by the laws of teh State of Delaware",
])
def test_fuzzy(quote):
    d = doc()
    q = verify(quote, d)
    check(q, d)
    assert quotes.FUZZY_THRESHOLD <= q.score < 100
    assert "Delaware" in d.text[q.char_start : q.char_end]


@pytest.mark.parametrize("quote", [
    "The Supplier may terminate this agreement at any time for convenience.",  # fabricated
    "Invoices are due within 60 days of receipt.",  # one changed number
    "Invoices are due within 31 days of receipt.",
    "Invoices are due within thirty days of receipt.",  # a number spelled out is a different number here
    "Either party may end it with sixty (90) days written notice of termination",  # a changed number word
    "The Distributor shall assign this agreement without consent.",  # a dropped negation
    "This agreement starts on 1 March 2025",  # short: folded match only, and the year differs
    "governed by the laws of the State of Nevada",  # a changed name in a short quote
    "gree",  # inside a word
    "at",
    "...",
])
def test_not_verified(quote):
    q = verify(quote, doc())
    assert (q.verified, q.char_start, q.char_end, q.location) == (False, None, None, {})


def test_short_quotes_are_never_fuzzy():
    d = doc()
    assert verify("Invoices are due", d).verified
    assert not verify("Invoices are dve", d).verified  # 3 words, one letter off
    assert verify("Invoices are dve within 30 days", d).verified  # 6 words: fuzzy allowed


def test_elided_quote():
    d = doc()
    q = verify("This agreement starts on 1 March 2024 ... runs for three years.", d)
    check(q, d, "This agreement starts on 1 March 2024 and runs for three years.")
    assert not verify("This agreement starts on 1 March 2024 ... the State of Nevada", d).verified
    assert not verify("runs for three years ... This agreement starts on", d).verified  # pieces out of order


def test_pdf_pages_and_chat_messages():
    page1, page2 = "The rent is paid monthly in advance.\n", "The deposit equals two months of rent.\n"
    pdf = Document("lease.pdf", "pdf", page1 + page2,
                   [Region(0, len(page1), "page", 0, "p. 1", {"page_label": "i"}),
                    Region(len(page1), len(page1 + page2), "page", 1, "p. 2", {"page_label": "ii"})])
    q = verify("the deposit equals two months of rent", pdf)
    check(q, pdf, "The deposit equals two months of rent")
    assert (q.location["page"], q.location["page_label"], q.location["label"]) == (2, "ii", "p. 2")
    lines = ["[14:01] <alice> shall we ship on friday?\n", "[14:02] <bob> no, the build is broken until monday\n"]
    regions, start = [], 0
    for i, (line, who) in enumerate(zip(lines, ("alice", "bob"))):
        regions.append(Region(start, start + len(line), "message", i, f"message {i + 1} — {who}, 14:0{i + 1}",
                              {"speaker": who, "time": f"14:0{i + 1}"}))
        start += len(line)
    chat = Document("irc.txt", "chat", "".join(lines), regions)
    q = verify("the build is broken until Monday", chat)
    check(q, chat, "the build is broken until monday")
    assert (q.location["message"], q.location["speaker"], q.location["label"]) == (2, "bob", "message 2 — bob, 14:02, line 2")


def test_verify_all_keeps_order():
    d = doc()
    out = verify_all(["runs for three years", "made up entirely here", "Invoices are due"], d)
    assert [q.verified for q in out] == [True, False, True] and out[1].text == "made up entirely here"


def test_a_novel_sized_document():
    """~800k characters of prose-like text: the fold is vectorised and fuzzy search anchors on k-grams, so this
    stays quick (no timing asserted); the right passage is found, a near-miss with another number is not."""
    rng = random.Random(0)
    vocab = ("the of and a to in he was that it his her with as had for she on at by said door river house "
             "captain letter morning silence window").split()
    words = [rng.choice(vocab) + ("\n" if rng.random() < 0.05 else "") for _ in range(180_000)]
    target = "The captain read the letter twice by the river at 7 in the morning, then said nothing."
    text = " ".join(words[:100_000]) + " " + target + " " + " ".join(words[100_000:])
    assert len(text) > 800_000, len(text)
    d = doc(text)
    at = text.index(target)
    check(verify(target, d), d, target)
    q = verify("the captian read the leter twice by the river at 7 in the morning then said nothing", d)
    check(q, d)
    assert abs(q.char_start - at) <= 4 and abs(q.char_end - (at + len(target) - 1)) <= 4
    assert not verify("The captain read the letter twice by the river at 8 in the morning, then said nothing.", d).verified
    assert not verify("the captain said the house by the river was silent in the morning", d).verified
