"""Grounded question answering tasks, shared by the fine-tuning data (bench/make_sft_data.py) and the
evaluation (bench/eval_grounded.py): one definition of each task, two disjoint splits.

Every task is a whole document, a question a person would ask, and the reply docreader is taught to give
(prompts/system.txt):

    Quote: "<words copied from the document>"      zero or more lines
    Answer: <short answer>                        or  Answer: The document does not say.

Quotes are always verbatim (whitespace runs collapsed to one space, which docreader's verifier
normalises too), at most QUOTE_WORDS words, and come first: a 135M model copies a passage more reliably
than it recalls one, and the answer that follows can lean on the copy.

Kinds: "contract" (CUAD clauses; absent clauses answer "not stated"), "meeting" (QMSum specific
queries), "babi-qa1/2/3" (bAbI facts spread through book text, BABILong-style), "needle" (facts stated
once, bench/long_tasks wordings), "irc" (who answered whose question, from the reply annotations), and
multi-turn follow-ups (`history`). The split is by document name (bench.eval_data.held_out) and, for
bAbI, by story.
"""

from __future__ import annotations

import io
import lzma
import random
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from docreader.document import Document

from . import eval_data as D
from . import long_tasks as T

ABSENT = "The document does not say."
QUOTE_WORDS = 40


@dataclass
class Example:
    kind: str
    name: str  # source document name (the split key)
    document: Document
    question: str
    reply: str  # the assistant's reply in the Quote/Answer format
    answers: list[str]  # gold short answers (any one counts)
    gold: list[tuple[int, int]]  # char ranges of the evidence in document.text ([] when absent)
    absent: bool
    history: list[tuple[str, str]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def reply(quotes: list[str], answer: str) -> str:
    lines = [f'Quote: "{q}"' for q in quotes if q]
    return "\n".join([*lines, f"Answer: {answer}"])


def one_line(text: str) -> str:
    return " ".join(text.split())


def quote_at(text: str, start: int, end: int, max_words: int = QUOTE_WORDS, focus: int | None = None) -> str:
    """The evidence [start, end) as a one-line verbatim quote of at most max_words words: a short span is
    widened to its line (when the line is short enough); a long one keeps the max_words words around
    `focus` (a char offset, e.g. where the answer's value is), else its first max_words words."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    words = text[start:end].split()
    if len(words) < 6 and len(text[line_start:line_end].split()) <= max_words:
        return " ".join(text[line_start:line_end].split()).strip(' "')
    first = 0
    if focus is not None and len(words) > max_words:
        at = len(text[start:max(start, focus)].split())  # words before the focus
        first = max(0, min(at - max_words // 3, len(words) - max_words))
    return " ".join(words[first:first + max_words]).strip(' "')


# --- contracts (CUAD) ----------------------------------------------------------------------------------

# category -> (how a person asks, what a "yes" answer says; None: the answer is the clause's own words)
CONTRACT_QUESTIONS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "Document Name": (("What is this agreement called?", "What is the title of this contract?"), None),
    "Parties": (("Who are the parties to this agreement?", "Which companies signed this contract?"), None),
    "Agreement Date": (("When was this agreement signed?", "What is the date of this contract?"), None),
    "Effective Date": (("When does this agreement take effect?", "What is the effective date?"), None),
    "Expiration Date": (("When does this agreement expire?", "How long does the initial term last?"), None),
    "Renewal Term": (("Does the agreement renew automatically, and for how long?", "What is the renewal term?"), None),
    "Notice Period To Terminate Renewal": (("How much notice is needed to stop the agreement from renewing?",
                                            "What notice period applies to non-renewal?"), None),
    "Governing Law": (("Which state's law governs this agreement?", "What law governs this contract?"), None),
    "Most Favored Nation": (("Is there a most favored nation clause?",), "a most favored nation clause"),
    "Non-Compete": (("Is there a non-compete clause?", "Does the contract restrict a party from competing?"),
                    "a non-compete restriction"),
    "Exclusivity": (("Is the arrangement exclusive?", "Does the contract grant any exclusivity?"), "an exclusivity clause"),
    "No-Solicit Of Customers": (("Can a party solicit the other party's customers?",), "a no-solicit of customers clause"),
    "Competitive Restriction Exception": (("Are there exceptions to the competition restrictions?",),
                                          "exceptions to its competitive restrictions"),
    "No-Solicit Of Employees": (("Is there a no-hire or non-solicitation of employees clause?",),
                                "a no-solicit of employees clause"),
    "Non-Disparagement": (("Does the contract forbid disparaging the other party?",), "a non-disparagement clause"),
    "Termination For Convenience": (("Can a party terminate the agreement without cause?",
                                     "Can this contract be ended for convenience?"), "termination for convenience"),
    "Rofr/Rofo/Rofn": (("Is there a right of first refusal or first offer?",), "a right of first refusal, offer or negotiation"),
    "Change Of Control": (("What happens if a party undergoes a change of control?",), "a change of control clause"),
    "Anti-Assignment": (("Can this agreement be assigned?", "Does assigning the contract need consent?"),
                        "restrictions on assignment"),
    "Revenue/Profit Sharing": (("Do the parties share revenue or profits?",), "revenue or profit sharing"),
    "Price Restrictions": (("Are there restrictions on changing prices?",), "price restrictions"),
    "Minimum Commitment": (("Is there a minimum purchase or order commitment?",), "a minimum commitment"),
    "Volume Restriction": (("Is there a cap or limit on volume?",), "a volume restriction"),
    "Ip Ownership Assignment": (("Who owns the intellectual property created under this agreement?",),
                                "an assignment of intellectual property ownership"),
    "Joint Ip Ownership": (("Is any intellectual property jointly owned?",), "joint ownership of intellectual property"),
    "License Grant": (("Does the agreement grant a license?", "What license is granted?"), "a license grant"),
    "Non-Transferable License": (("Can the license be transferred?",), "a non-transferable license"),
    "Affiliate License-Licensor": (("Does the license cover the licensor's affiliates?",), "a license from the licensor's affiliates"),
    "Affiliate License-Licensee": (("Can the licensee's affiliates use the license?",), "a license to the licensee's affiliates"),
    "Unlimited/All-You-Can-Eat-License": (("Is the license unlimited in use?",), "an unlimited-use license"),
    "Irrevocable Or Perpetual License": (("Is the license perpetual or irrevocable?",), "a perpetual or irrevocable license"),
    "Source Code Escrow": (("Is source code placed in escrow?",), "a source code escrow"),
    "Post-Termination Services": (("What obligations continue after termination?",), "post-termination obligations"),
    "Audit Rights": (("Can a party audit the other's books or records?",), "audit rights"),
    "Uncapped Liability": (("Is any liability uncapped?",), "uncapped liability"),
    "Cap On Liability": (("Is liability capped?", "What is the limit on liability?"), "a cap on liability"),
    "Liquidated Damages": (("Are there liquidated damages?",), "liquidated damages"),
    "Warranty Duration": (("How long does the warranty last?",), None),
    "Insurance": (("Does a party have to carry insurance?",), "an insurance requirement"),
    "Covenant Not To Sue": (("Does a party agree not to sue or challenge the other?",), "a covenant not to sue"),
    "Third Party Beneficiary": (("Are there third-party beneficiaries?",), "third-party beneficiaries"),
}

_LAW = re.compile(r"laws?\s+of\s+(?:the\s+)?(?:(?:State|Commonwealth|Province|Republic|Kingdom)\s+of\s+)?"
                  r"((?:[A-Z][A-Za-z.]+)(?:\s+(?:of\s+)?[A-Z][A-Za-z.]+){0,3})")
_DURATION = re.compile(r"\b((?:\w+\s+)?\(?\d+\)?\s+(?:calendar\s+|business\s+)?(?:years?|months?|days?|weeks?))\b", re.I)
_DATE = re.compile(r"\b((?:January|February|March|April|May|June|July|August|September|October|November|December)"
                   r"\s+\d{1,2},?\s+\d{4}|\d{1,2}(?:st|nd|rd|th)?\s+(?:day\s+of\s+)?(?:January|February|March|April|May|"
                   r"June|July|August|September|October|November|December),?\s+\d{4}|\d{1,2}/\d{1,2}/\d{2,4})")


def short_answer(category: str, texts: list[str]) -> str:
    """The answer line for a present clause: its own words when short, a value pulled out of it (a state,
    a duration, a date) when it is long, else a yes naming the clause."""
    what = CONTRACT_QUESTIONS.get(category, ((), None))[1]
    first = one_line(texts[0]) if texts else ""
    if category == "Parties":
        names = list(dict.fromkeys(one_line(t).strip('"“”') for t in texts if len(t.split()) <= 8))[:3]
        return " and ".join(names) if names else first
    if category == "Governing Law" and (m := _LAW.search(first)):
        return f"The laws of {m.group(1).rstrip('.')}."
    if what is None:
        if len(first.split()) <= 12:
            return first.rstrip(".") + "."
        for rx in (_DATE, _DURATION):
            if m := rx.search(first):
                return m.group(1) + "."
        return "See the quoted clause."
    return f"Yes, the agreement has {what}."


def clause_example(name: str, doc: Document, category: str, gold: list[tuple[int, int]], rng: random.Random,
                   meta: dict | None = None) -> Example:
    """One clause question about doc: with gold ranges, quote the first clause (around its answer's value) and
    answer shortly; without, answer ABSENT."""
    asks = CONTRACT_QUESTIONS.get(category, ((f"What does the contract say about {category.lower()}?",), None))[0]
    question = rng.choice(asks)
    meta = {"category": category, **(meta or {})}
    if not gold:
        return Example("contract", name, doc, question, reply([], ABSENT), [], [], True, meta=meta)
    s, e = gold[0]
    texts = [doc.text[a:b] for a, b in gold]
    answer = short_answer(category, texts)
    value = answer.removeprefix("The laws of ").rstrip(".")
    at = doc.text.find(value.split()[0] if value else "", s, e) if value else -1
    quotes = [quote_at(doc.text, s, e, focus=at if at >= 0 else None)]
    return Example("contract", name, doc, question, reply(quotes, answer), [one_line(t) for t in texts], gold, False,
                   meta=meta)


def contract_examples(row: dict, rng: random.Random, n_present: int | None, n_absent: int | None,
                      max_chars: int | None = None) -> list[Example]:
    """Questions about one CUAD contract (cut to max_chars at a line end): answerable ones quote the gold
    clause; a clause absent from the (kept) text answers ABSENT."""
    doc, kept = D.contract_document(row, max_chars)
    return [clause_example(row["name"], doc, q["category"], q["gold"], rng)
            for q in D.contract_questions(row, kept, n_present, n_absent)]


# what nearly every contract has, labelled or not: in a bundle "when was this agreement signed?" has no one answer
EVERY_CONTRACT = {"Document Name", "Parties", "Agreement Date", "Effective Date", "Expiration Date", "Governing Law"}


def contract_bundle_examples(rows: list[dict], rng: random.Random, n_per: int = 3) -> list[Example]:
    """Several whole CUAD contracts one after another as one document (a filing with its exhibits), so long
    windows hold a long contract-like document: a clause is asked about only where the bundle is
    unambiguous — its category is in exactly one member (answer: that clause) or in none (ABSENT)."""
    offsets = [0]
    for r in rows[:-1]:
        offsets.append(offsets[-1] + len(r["text"]) + 3)  # + the "\n\n\n" between members
    name = "+".join(r["name"] for r in rows)
    doc = Document(f"bundle-{len(rows)}-{rows[0]['name']}.txt", "txt", "\n\n\n".join(r["text"] for r in rows), [],
                   {"kind": "contract", "members": [r["name"] for r in rows]})
    golds: dict[str, list[list[tuple[int, int]]]] = {}  # category -> per member: its gold ranges in the bundle
    for r, off in zip(rows, offsets):
        for q in r["questions"]:
            golds.setdefault(q.get("category", ""), []).append([(off + s, off + e) for s, e in D.gold_ranges(q)])
    present = [(c, [g for g in gs if g][0]) for c, gs in golds.items()
               if sum(bool(g) for g in gs) == 1 and c not in EVERY_CONTRACT]
    absent = [c for c, gs in golds.items() if len(gs) == len(rows) and not any(gs)]
    rng.shuffle(present)
    rng.shuffle(absent)
    meta = {"bundle": len(rows)}
    out = [clause_example(name, doc, cat, gold, rng, meta) for cat, gold in present[:n_per * len(rows)]]
    return out + [clause_example(name, doc, cat, [], rng, meta) for cat in absent[:max(1, len(out) // 2)]]


FOLLOW_UPS = ("And {q}", "One more thing: {q}", "{q}", "Also, {q}")


def with_follow_up(first: Example, second: Example, rng: random.Random) -> Example:
    """A second question about the same document after the first one was answered (a chat turn)."""
    q = second.question
    q = rng.choice(FOLLOW_UPS).format(q=q[0].lower() + q[1:])
    return Example(second.kind, second.name, second.document, q, second.reply, second.answers, second.gold,
                   second.absent, [(first.question, first.reply)], {**second.meta, "follow_up": True})


# --- meetings (QMSum) ------------------------------------------------------------------------------------

def _overlap(a: str, b: set[str]) -> int:
    return sum(1 for w in set(re.findall(r"[a-z0-9]+", a.lower())) if w in b)


def meeting_examples(row: dict, rng: random.Random, n: int | None, max_turns: int | None = None) -> list[Example]:
    """QMSum specific queries: the quote is the gold turn (or QUOTE_WORDS window of it) sharing the most
    words with the reference answer; the answer is the reference."""
    doc = D.meeting_document(row, max_turns)
    out = []
    for q in D.meeting_queries(row, doc, n):
        ref = set(re.findall(r"[a-z0-9]+", q["reference"].lower())) - _STOP
        best, best_score = None, -1
        for s, e in q["gold"]:
            for r in doc.regions:
                if r.kind == "message" and s <= r.start and r.end <= e:
                    words = doc.text[r.start:r.end].split(": ", 1)[-1].split()
                    for w0 in range(0, max(1, len(words) - QUOTE_WORDS + 1), 10):
                        cand = " ".join(words[w0:w0 + QUOTE_WORDS])
                        score = _overlap(cand, ref)
                        if score > best_score:
                            best, best_score = cand, score
        quotes = [best] if best else []
        out.append(Example("meeting", row["name"], doc, q["question"], reply(quotes, one_line(q["reference"])),
                           [q["reference"]], q["gold"], False, meta={"turns": q["turns"]}))
    return out


_STOP = set("the a an and or of to in on for is was were be been are it that this with as at by from they he she "
            "we you i about what how why which who their his her its".split())


# --- facts hidden in book text (bAbI, needles) -------------------------------------------------------------

def sentence_starts(text: str) -> list[int]:
    """Offsets where a new sentence or paragraph begins (candidate places to insert a fact)."""
    return [0] + [m.end() for m in re.finditer(r"(?<=[.!?])\s+(?=[A-Z\"'])|\n\s*\n", text)]


def spread(haystack: str, facts: list[str], depths: list[float]) -> tuple[str, list[tuple[int, int]]]:
    """Insert facts (in order, at non-decreasing depths in [0, 1]) at sentence starts of haystack.
    -> (text, char range of each fact in it)."""
    starts = sentence_starts(haystack)
    out, ranges, prev = [], [], 0
    for fact, depth in zip(facts, depths):
        pos = max(prev, min(starts, key=lambda s: abs(s - depth * len(haystack))))
        out.append(haystack[prev:pos])
        at = sum(len(p) for p in out)
        ranges.append((at, at + len(fact)))
        out.append(fact + " ")
        prev = pos
    out.append(haystack[prev:])
    return "".join(out), ranges


def haystack(books: list[str], n_chars: int, rng: random.Random) -> str:
    """n_chars of book text starting at a paragraph in a random book, running on into the next books."""
    i = rng.randrange(len(books))
    text = books[i]
    start = text.find("\n\n", rng.randrange(max(1, len(text) - n_chars))) + 2 if len(text) > n_chars else 0
    parts, have = [text[start:start + n_chars]], min(n_chars, len(text) - start)
    while have < n_chars:
        i = (i + 1) % len(books)
        parts.append(books[i][: n_chars - have])
        have += len(parts[-1])
    return "\n\n".join(parts)[:n_chars]


def chars_for(tokenizer, books: list[str], n_tokens: int) -> int:
    sample = books[0][:20000] or "text"
    per_token = len(sample) / max(1, len(tokenizer(sample, add_special_tokens=False)["input_ids"]))
    return int(n_tokens * per_token)


@dataclass
class BabiStory:
    task: int
    index: int
    facts: list[str]  # every fact before the question, in order
    question: str
    answer: str
    support: list[int]  # indices into facts


def load_babi(tar_path: str | Path, task: int, split: str) -> list[BabiStory]:
    """bAbI en-10k task `task` (its training file), one BabiStory per question; split "eval" keeps stories
    whose index % 10 == 0, "train" the rest."""
    with tarfile.open(fileobj=io.BytesIO(lzma.open(tar_path).read())) as tar:
        member = next(m for m in tar.getmembers() if re.search(rf"(^|/)qa{task}_.*_train\.txt$", m.name))
        lines = tar.extractfile(member).read().decode("utf-8").splitlines()
    stories, facts, ids, story = [], [], {}, -1
    for line in lines:
        num, _, body = line.partition(" ")
        if int(num) == 1:
            facts, ids, story = [], {}, story + 1
        if "\t" in body:
            q, a, sup = body.split("\t")
            if (story % 10 == 0) == (split == "eval"):
                stories.append(BabiStory(task, story, list(facts), q.strip(), a.strip(),
                                         [ids[int(s)] for s in sup.split()]))
        else:
            ids[int(num)] = len(facts)
            facts.append(body.strip())
    return stories


def babilong_example(story: BabiStory, books: list[str], n_chars: int, rng: random.Random, name: str) -> Example:
    """The story's facts spread in order through n_chars of book text; quote the supporting facts."""
    depths = sorted(rng.random() for _ in story.facts)
    text, ranges = spread(haystack(books, n_chars, rng), story.facts, depths)
    doc = Document(name, "txt", text, [], {"kind": "babilong"})
    gold = [ranges[i] for i in story.support]
    quotes = [story.facts[i] for i in story.support]
    return Example(f"babi-qa{story.task}", name, doc, story.question, reply(quotes, f"The {story.answer}."),
                   [story.answer], gold, False, meta={"story": story.index, "facts": len(story.facts)})


def needle_example(books: list[str], n_chars: int, rng: random.Random, name: str) -> Example:
    """A bench/long_tasks retrieval task (facts stated once, asked naturally) in book text."""
    task = T.sample_task(rng)
    text, ranges = spread(haystack(books, n_chars, rng), task.needles, sorted(task.depths))
    doc = Document(name, "txt", text, [], {"kind": "needle"})
    used = [i for i, n in enumerate(task.needles) if any(v in n for v in task.values)] or list(range(len(task.needles)))
    if task.variant == "chain":
        used = list(range(len(task.needles)))
    quotes = [task.needles[i] for i in used]
    return Example("needle", name, doc, task.question, reply(quotes, task.answer), list(task.values),
                   [ranges[i] for i in used], False, meta={"variant": task.variant})


# --- chat logs (IRC with reply annotations) --------------------------------------------------------------

def irc_examples(raw_path: str | Path, rng: random.Random, n: int) -> list[Example]:
    """'Who answered X's question about Y?': a question line with exactly one replying nick in the
    annotations; the quote is the reply."""
    from docreader.loaders import load

    raw_path = Path(raw_path)
    doc = load(str(raw_path))
    msgs = [r for r in doc.regions if r.kind == "message"]
    links: dict[int, set[int]] = {}
    for line in raw_path.with_name(raw_path.name.replace(".raw.txt", ".annotation.txt")).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] != parts[1]:
            links.setdefault(int(parts[0]), set()).add(int(parts[1]))
    out = []
    for parent, replies in sorted(links.items()):
        if parent >= len(msgs) or any(r >= len(msgs) for r in replies):
            continue
        asker = msgs[parent].meta.get("speaker")
        body = doc.text[msgs[parent].start:msgs[parent].end].split(f"{asker}: ", 1)[-1]
        nicks = {msgs[r].meta.get("speaker") for r in replies} - {asker}
        if "?" not in body or len(nicks) != 1 or not asker:
            continue
        first = min(r for r in replies if msgs[r].meta.get("speaker") in nicks)
        nick = nicks.pop()
        topic = " ".join(body.split()[:10])
        question = rng.choice(("Who answered {a}'s question \"{t}\"?", "Who replied when {a} asked \"{t}\"?")).format(a=asker, t=topic)
        r = msgs[first]
        out.append(Example("irc", raw_path.name, doc, question,
                           reply([quote_at(doc.text, r.start, r.end)], f"{nick}."), [nick], [(r.start, r.end)], False,
                           meta={"line": parent, "reply": first}))
    rng.shuffle(out)
    return out[:n]
