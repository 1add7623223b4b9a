"""The answer's own provenance: the passages it quotes, checked against the document.

The model is asked (prompts/system.txt) to answer as `Quote: "..."` lines, then `Answer: ...`, or
`Answer: The document does not say.`; `parse` reads that, degrading gracefully when the model does not follow
it. `verify` looks each quote up in the document text: exactly; else in a folded form (letters and digits
only, case and accents folded, so whitespace, line-break hyphenation, curly quotes, dashes and ligatures do
not matter); else, for quotes of 4+ words, fuzzily (Levenshtein similarity >= 90 on the folded form, for
PDF-mangled text). Numbers and negations must be the same in the quote and the passage at every level but
the exact one, so "60 days" never verifies against "30 days". A verified quote is a string match, not an
entailment check: it proves the passage is in the document, not that it supports the answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .document import Document

MIN_FUZZY_WORDS = 4  # shorter quotes must match exactly after folding
FUZZY_THRESHOLD = 90.0  # Levenshtein similarity (0-100) of the folded quote and passage
KGRAM = 8  # folded characters per anchor when locating a fuzzy candidate
MAX_ANCHOR_HITS = 200  # an anchor found more often than this says nothing about where the quote is
MAX_ELLIPSIS_GAP = 2000  # characters allowed between the pieces of a quote elided with "..."

_LABEL = re.compile(r"^[\s>*_#-]*(quote|answer)[\s*_]*:[\s*_]*(.*)$", re.I)
_OPEN, _CLOSE = "\"'“‘«„`", "\"'”’»“`"
_ELLIPSIS = re.compile(r"\s*(?:\.\s?\.\s?\.|…)\s*")
_ABSENT = re.compile(
    r"\b(does not|doesn't|do not|don't|did not|didn't|is not|isn't|are not|aren't|was not|wasn't|cannot|can't)"
    r"\s+(say|state|mention|specify|contain|include|provide|have|address|describe|discuss|appear|exist|"
    r"indicate|cover|reference|refer|list|define|tell|give)\w*"
    r"|\bnot\s+(mentioned|specified|stated|provided|included|addressed|found|available|given|present|"
    r"applicable|defined|covered|described|discussed|clear|indicated|listed)"
    r"|\bno\s+(such|mention|information|clause|provision|reference|specific|details?|indication|"
    r"explicit|relevant)\b"
    r"|\bthere\s+(is|are)\s+no\b|\bnone\b|\bn/a\b|\bunable to (find|determine|locate)\b"
    r"|\bi (could not|couldn't|cannot|can't) find\b",
    re.I)
_NUMBER_WORDS = set(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million "
    "billion first second third fourth fifth sixth seventh eighth ninth tenth half quarter twice once".split())
_NEGATIONS = {"not", "no", "never", "nor", "none", "neither", "nothing", "without", "cannot"}
_CRITICAL = re.compile(r"\d+|[^\W\d_]+")


def says_absent(answer: str) -> bool:
    """Heuristic: the answer states that the document does not contain the asked-for thing."""
    return bool(_ABSENT.search(answer or ""))


@dataclass
class Parsed:
    answer: str  # the short answer (the whole text minus quote lines when there is no `Answer:`)
    quotes: list[str]  # the quoted passages, quote marks and edge ellipses removed
    absent: bool  # the answer says the document does not say


@dataclass
class Quote:
    text: str  # as the model wrote it (after `parse`)
    verified: bool  # found in the document; only verified quotes are citations
    char_start: int | None  # the matched passage in document.text (None when not verified)
    char_end: int | None
    score: float  # 100 for an exact or folded match, else the fuzzy similarity (0 when nothing was found)
    location: dict = field(default_factory=dict)  # Document.locate(): page / line / message / section / label

    def to_json(self) -> dict:
        """As --json, the log and the LangChain integration show it."""
        return {"text": self.text, "verified": self.verified, "char_start": self.char_start,
                "char_end": self.char_end, "score": round(self.score, 2), **self.location}


def quote_line(q: dict, max_chars: int = 240) -> str:
    """`Quoted from p. 10: "..."` for a verified quote (`Quoted: "..."` without a location); unverified ones say
    so. `q`: `Quote.to_json()` or a logged row with its location."""
    text = " ".join(q["text"].split())
    text = text if len(text) <= max_chars else text[: max_chars - 1] + "…"
    if not q["verified"]:
        return f'Unverified quote (not found in the document): "{text}"'
    return f'Quoted from {q["label"]}: "{text}"' if q.get("label") else f'Quoted: "{text}"'


def _unquote(q: str) -> str:
    """Strip the quote marks and edge ellipses a model wraps a passage in (either may be missing)."""
    q = q.strip()
    for _ in range(2):
        q = re.sub(r"^(?:\.\.\.|…)\s*|\s*(?:\.\.\.|…)$", "", q).strip()
        if q[:1] and q[0] in _OPEN:
            q = q[1:]
        if q[-1:] and q[-1] in _CLOSE:
            q = q[:-1]
        q = q.strip()
    return q


def _closes(line: str) -> bool:
    return line.rstrip()[-1:] in tuple(_CLOSE)


def parse(text: str) -> Parsed:
    """Read `Quote: "..."` lines and the `Answer:`; a quote may run over lines until its closing mark."""
    quotes: list[str] = []
    answer: list[str] | None = None
    rest: list[str] = []
    lines = (text or "").splitlines()
    i = 0
    while i < len(lines):
        m = _LABEL.match(lines[i])
        if m and m.group(1).lower() == "quote":
            body = m.group(2)
            opened = body.strip()[:1] in tuple(_OPEN) and not _closes(body)
            while opened and i + 1 < len(lines) and lines[i + 1].strip() and not _LABEL.match(lines[i + 1]):
                i += 1
                body += "\n" + lines[i]
                opened = not _closes(lines[i])
            if _unquote(body):
                quotes.append(_unquote(body))
        elif m and answer is None:
            answer = [m.group(2)]
        else:
            (rest if answer is None else answer).append(lines[i])
        i += 1
    short = "\n".join(answer if answer is not None else rest).strip()
    return Parsed(short, quotes, says_absent(short))


# -- the folded index: letters and digits only, each mapped back to its character in document.text ----------

@dataclass
class _Folded:
    text: str  # folded characters
    orig: np.ndarray  # orig[i]: offset in document.text of folded character i


def _fold_char(c: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKD", c).lower() if ch.isalnum())


def _fold(text: str) -> _Folded:
    """Vectorised over the text (a 1 MB novel folds in well under a second): one Python call per distinct char."""
    if not text:
        return _Folded("", np.zeros(0, dtype=np.int64))
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    uniq, inverse = np.unique(codes, return_inverse=True)
    folds = [_fold_char(chr(c)) for c in uniq.tolist()]
    counts = np.array([len(f) for f in folds], dtype=np.int64)[inverse]
    table = {int(c): f for c, f in zip(uniq.tolist(), folds)}
    return _Folded(text.translate(table), np.repeat(np.arange(len(text), dtype=np.int64), counts))


def _folded(document: Document) -> _Folded:
    # cached against the text it was built from, like Document's line starts
    cached = document.__dict__.get("_folded_cache")
    if cached is None or cached[0] is not document.text:
        cached = (document.text, _fold(document.text))
        document.__dict__["_folded_cache"] = cached
    return cached[1]


def _span(f: _Folded, a: int, b: int) -> tuple[int, int]:
    """Folded [a, b) -> document characters [start, end)."""
    return int(f.orig[a]), int(f.orig[b - 1]) + 1


def _at_word_edges(f: _Folded, a: int, b: int) -> bool:
    """A folded match must not start or end inside a word of the document ("cat" is not in "concatenate")."""
    return (a == 0 or f.orig[a] - f.orig[a - 1] > 1) and (b == len(f.text) or f.orig[b] - f.orig[b - 1] > 1)


def _word_edges(f: _Folded, a: int, b: int) -> tuple[int, int]:
    """Folded [a, b) widened to whole words of the document."""
    while a > 0 and f.orig[a] - f.orig[a - 1] <= 1:
        a -= 1
    while b < len(f.text) and f.orig[b] - f.orig[b - 1] <= 1:
        b += 1
    return a, b


def _critical(text: str) -> Counter:
    """Numbers (digit runs) and number words and negations: what must not differ between quote and passage."""
    out: Counter = Counter()
    for tok in _CRITICAL.findall(re.sub(r"n['’]t\b", " not", text.lower())):
        if tok[0].isdigit() or tok in _NUMBER_WORDS or tok in _NEGATIONS:
            out[tok] += 1
    return out


def _last_row(q: str, w: str, free_start: bool) -> np.ndarray:
    """Edit distances of q to w[s:j] for every end j: s free (best over starts) or 0; one numpy row per char of q."""
    wa = np.frombuffer(w.encode("utf-32-le"), dtype=np.uint32)
    idx = np.arange(len(w) + 1)
    row = np.zeros(len(w) + 1, dtype=np.int64) if free_start else idx.copy()
    for ch in q:
        best = np.minimum(np.concatenate(([row[0] + 1], row[:-1] + (wa != ord(ch)))), row + 1)
        row = np.minimum.accumulate(best - idx) + idx  # insertions along the row
    return row


def _closest_substring(q: str, w: str) -> tuple[int, int]:
    """The substring w[s:e] closest to q in edit distance: its end, then its start (the same alignment read
    backwards from that end)."""
    e = int(_last_row(q, w, True).argmin())
    return e - int(_last_row(q[::-1], w[:e][::-1], False).argmin()), e


def _fuzzy(f: _Folded, q: str, lo: int, hi: int) -> tuple[float, int, int] | None:
    """The best fuzzy match of folded q in folded [lo, hi): candidates where several exact k-grams of q agree
    on an alignment, each scored by edit distance; -> (score, a, b) or None."""
    diags: list[int] = []
    step = max(1, (len(q) - KGRAM) // 64 + 1, KGRAM // 2)
    for off in range(0, max(1, len(q) - KGRAM + 1), step):
        gram, hits, pos = q[off : off + KGRAM], [], f.text.find(q[off : off + KGRAM], lo, hi)
        while pos >= 0 and len(hits) <= MAX_ANCHOR_HITS:
            hits.append(pos - off)
            pos = f.text.find(gram, pos + 1, hi)
        if len(hits) <= MAX_ANCHOR_HITS:
            diags.extend(hits)
    if not diags:
        return None
    slack = len(q) // 5 + KGRAM
    votes = Counter(d // slack for d in diags)
    best: tuple[float, int, int] | None = None
    for bucket, _ in votes.most_common(3):
        ws, we = max(lo, bucket * slack - slack), min(hi, bucket * slack + len(q) + 2 * slack)
        s, e = _closest_substring(q, f.text[ws:we])
        a, b = _word_edges(f, ws + s, ws + e)  # whole words: "Nevada" is not "Delawa(re)"
        score = 100.0 * (1 - int(_last_row(q, f.text[a:b], False)[-1]) / max(len(q), b - a, 1))
        if best is None or score > best[0]:
            best = (score, a, b)
    return best


def _locate(text: str, f: _Folded, quote: str, lo: int = 0, hi: int | None = None) -> tuple[float, int, int] | None:
    """(score, char_start, char_end) of `quote` in text[lo:hi]: exact, then folded, then fuzzy."""
    hi = len(text) if hi is None else hi
    q = _fold(quote).text
    if not q:  # nothing but punctuation: not a citation
        return None
    edge = r"(?![^\W_])" if quote[-1].isalnum() else ""  # not inside a word ("cat" is not in "concatenate")
    m = re.compile((r"(?<![^\W_])" if quote[0].isalnum() else "") + re.escape(quote) + edge).search(text, lo, hi)
    if m:
        return 100.0, m.start(), m.end()
    flo, fhi = _folded_range(f, lo, hi)
    found: tuple[float, int, int] | None = None
    pos = f.text.find(q, flo, fhi)
    while pos >= 0 and found is None:
        if _at_word_edges(f, pos, pos + len(q)):
            found = (100.0, pos, pos + len(q))
        pos = f.text.find(q, pos + 1, fhi)
    if found is None and len(re.findall(r"\w+", quote)) >= MIN_FUZZY_WORDS:
        found = _fuzzy(f, q, flo, fhi)
    if found is None or found[0] < FUZZY_THRESHOLD:
        return None
    start, end = _span(f, found[1], found[2])
    if _critical(quote) != _critical(text[start:end]):
        return None
    return found[0], start, end


def _folded_range(f: _Folded, start: int, end: int) -> tuple[int, int]:
    """Document characters [start, end) -> the folded range inside them."""
    return int(np.searchsorted(f.orig, start)), int(np.searchsorted(f.orig, end))


def verify(quote: str, document: Document) -> Quote:
    """Look `quote` up in the document; an elided quote ("A ... B") verifies when its pieces are found in
    order, close together. Unverified quotes keep no offsets and no location."""
    text, f = document.text, _folded(document)
    pieces = [p for p in _ELLIPSIS.split(quote.strip()) if p.strip()]
    found: list[tuple[float, int, int]] = []
    lo, hi = 0, len(text)
    for piece in pieces:
        hit = _locate(text, f, piece.strip(), lo, hi)
        if hit is None:
            return Quote(quote, False, None, None, 0.0, {})
        found.append(hit)
        lo, hi = hit[2], min(len(text), hit[2] + MAX_ELLIPSIS_GAP)
    if not found:
        return Quote(quote, False, None, None, 0.0, {})
    start, end = found[0][1], found[-1][2]
    return Quote(quote, True, start, end, min(h[0] for h in found), document.locate(start, end))


def verify_all(quotes: list[str], document: Document) -> list[Quote]:
    return [verify(q, document) for q in quotes]
