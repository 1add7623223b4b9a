"""Synthetic retrieval tasks for long-context training (RULER-like needles hidden in book text).

A task is a few needle sentences, a question and its answer. `hide` puts the needles' token ids between
sentences of a tokenised haystack at chosen depths, so a trainer can supervise the answer alone.

The wordings and vocabularies here are deliberately disjoint from bench/eval_needle.py, our needle
evaluation: no "pass key", no "special magic number", no city names, no "Answer with the number only."
Training on other phrasings and key words makes the evaluation measure retrieval that generalises, not a
memorised sentence. tests/test_long_data.py checks that disjointness.

Variants (weights in VARIANTS):
  single     one value to find ("the hidden access number is 48213")
  kv         one key-value needle, ask the key
  multikey   several key-value needles with distinct keys (distractors), ask one
  multivalue one key given several values at different depths, ask for all of them (in document order)
  multiquery two keys, ask for both values in one question (needs both needles)
  chain      two needles linked by an intermediate number ("the X is in drawer 41"; "drawer 41 holds Y"),
             the question names X and asks for Y (needs both needles)
Values are numbers (3 to 8 digits), words or short codes ("KT-5081", "R7QM2").
"""

from __future__ import annotations

import bisect
import random
import re
import string
from dataclasses import dataclass, field

ADJECTIVES = ("amber azure brass bronze cobalt copper crimson dusty emerald faded frozen gilded granite hollow "
              "ivory jade lunar marble misty mossy northern olive pale quiet rusty scarlet silent silver "
              "slate southern starlit stone sunken tawny velvet violet wandering western willow wooden").split()
NOUNS = ("anchor archive badger beacon bellows cabinet canoe cellar chapel chisel compass corridor falcon "
         "fountain furnace garden gazebo harbor hatchet heron kettle ladder lantern lighthouse loom meadow "
         "mill orchard otter pantry pavilion quarry raven satchel spindle stable staircase telescope thimble "
         "tower trellis tunnel vineyard wagon walrus windmill").split()
VALUE_WORDS = ("apricot balsam bramble caramel cinnamon clover driftwood elderberry fennel gingham hazelnut "
               "heather indigo juniper kestrel lavender magnolia marzipan nutmeg oatmeal paprika parsnip "
               "pebble quartz quince rhubarb saffron sandstone sorrel tamarind thistle tinder truffle tulip "
               "umber walnut wicker yarrow zephyr").split()
CONTAINERS = ("drawer", "locker", "box", "cabinet", "vault", "crate", "shelf")
LABELS = {  # what a value is called, by value type; never "pass key" or "magic number"
    "number": ("access number", "registration number", "reference number", "combination", "ledger number"),
    "word": ("password", "code word", "watchword", "secret word", "countersign"),
    "code": ("serial code", "ticket code", "reference code", "permit code", "tracking code"),
}

SINGLE_NEEDLES = (
    "The hidden {label} is {value}.",
    "Keep this in mind: the {label} you will need later is {value}.",
    "A note was left here saying that the {label} is {value}, and nothing else.",
    "Whoever reads this should remember one thing: the {label} is {value}.",
    "Important: the {label} is {value}. Do not forget {value}.",
)
SINGLE_QUESTIONS = (
    "What is the hidden {label} mentioned in the document?",
    "Which {label} does the text tell the reader to remember?",
    "The document contains a {label}. What is it?",
    "Find the {label} hidden in the document.",
)
KV_NEEDLES = (
    "The {label} for the {key} is {value}.",
    "Remember that the {key} has the {label} {value}.",
    "For the record, the {label} assigned to the {key} is {value}.",
    "Note: {value} is the {label} of the {key}.",
    "Written on a slip of paper: the {key}'s {label} is {value}.",
)
KV_QUESTIONS = (
    "What is the {label} for the {key}?",
    "Which {label} belongs to the {key}?",
    "According to the document, what {label} was given to the {key}?",
    "Look up the {key}: what is its {label}?",
)
MULTIVALUE_QUESTIONS = (
    "List every {label} given for the {key}.",
    "What are all the {label}s of the {key}?",
    "The document gives the {key} more than one {label}. Which ones?",
)
MULTIQUERY_QUESTIONS = (
    "What are the {label} for the {key} and the {label} for the {key2}?",
    "Give the {label} of the {key} and that of the {key2}.",
)
CHAIN_NEEDLES = (
    ("The {key} is kept in {container} {mid}.", "The {label} stored in {container} {mid} is {value}."),
    ("Whoever looks for the {key} will find it in {container} {mid}.",
     "Inside {container} {mid} there is a card with the {label} {value}."),
)
CHAIN_QUESTIONS = (
    "What is the {label} stored in the {container} that holds the {key}?",
    "Find the {container} where the {key} is kept. Which {label} is in it?",
)
SUFFIXES = ("", "", " Reply with the {label} only.", " Give just the value.", " Be brief.")


@dataclass
class Task:
    variant: str
    needles: list[str]  # sentences to hide, in the order given
    question: str
    answer: str  # the assistant's reply, without the end-of-turn token
    values: list[str]  # what the answer must contain
    depths: list[float] = field(default_factory=list)  # one per needle, 0..1, drawn by sample_task


def value(kind: str, rng: random.Random) -> str:
    if kind == "number":
        digits = rng.randint(3, 8)
        return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
    if kind == "word":
        return rng.choice(VALUE_WORDS)
    if rng.random() < 0.5:
        return "".join(rng.choices(string.ascii_uppercase, k=2)) + "-" + str(rng.randint(1000, 9999))
    return "".join(rng.choices(string.ascii_uppercase + string.digits, k=5))


def keys(n: int, rng: random.Random) -> list[str]:
    """n distinct "adjective noun" keys."""
    out: list[str] = []
    while len(out) < n:
        k = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        if k not in out:
            out.append(k)
    return out


def distinct_values(kind: str, n: int, rng: random.Random) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        v = value(kind, rng)
        if v not in out:
            out.append(v)
    return out


def _ask(template: str, rng: random.Random, **kw) -> str:
    return template.format(**kw) + rng.choice(SUFFIXES).format(**kw)


def _reply(values: list[str], label: str, rng: random.Random) -> str:
    joined = values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]
    return rng.choice((joined, joined + ".", f"The {label} is {joined}." if len(values) == 1 else f"{joined}."))


def _kv_needles(ks: list[str], vs: list[str], label: str, rng: random.Random) -> list[str]:
    return [rng.choice(KV_NEEDLES).format(label=label, key=k, value=v) for k, v in zip(ks, vs)]


def single(rng: random.Random, kind: str, label: str) -> Task:
    v = value(kind, rng)
    return Task("single", [rng.choice(SINGLE_NEEDLES).format(label=label, value=v)],
                _ask(rng.choice(SINGLE_QUESTIONS), rng, label=label), _reply([v], label, rng), [v])


def kv(rng: random.Random, kind: str, label: str, n_keys: int = 1, variant: str = "kv") -> Task:
    ks, vs = keys(n_keys, rng), distinct_values(kind, n_keys, rng)
    i = rng.randrange(n_keys)
    return Task(variant, _kv_needles(ks, vs, label, rng),
                _ask(rng.choice(KV_QUESTIONS), rng, label=label, key=ks[i]), _reply([vs[i]], label, rng), [vs[i]])


def multikey(rng: random.Random, kind: str, label: str) -> Task:
    return kv(rng, kind, label, n_keys=rng.randint(2, 12), variant="multikey")


def multivalue(rng: random.Random, kind: str, label: str) -> Task:
    """The answer lists the values in document order, fixed later by `hide` (see `order_values`)."""
    k, vs = keys(1, rng)[0], distinct_values(kind, rng.randint(2, 4), rng)
    return Task("multivalue", _kv_needles([k] * len(vs), vs, label, rng),
                _ask(rng.choice(MULTIVALUE_QUESTIONS), rng, label=label, key=k), "", vs)


def multiquery(rng: random.Random, kind: str, label: str) -> Task:
    n = rng.randint(2, 6)  # two asked, the rest distractors
    ks, vs = keys(n, rng), distinct_values(kind, n, rng)
    i, j = rng.sample(range(n), 2)
    q = _ask(rng.choice(MULTIQUERY_QUESTIONS), rng, label=label, key=ks[i], key2=ks[j])
    return Task("multiquery", _kv_needles(ks, vs, label, rng), q, _reply([vs[i], vs[j]], label, rng), [vs[i], vs[j]])


def chain(rng: random.Random, kind: str, label: str) -> Task:
    k, container, mid, v = keys(1, rng)[0], rng.choice(CONTAINERS), str(rng.randint(2, 999)), value(kind, rng)
    first, second = rng.choice(CHAIN_NEEDLES)
    kw = dict(key=k, container=container, mid=mid, label=label, value=v)
    return Task("chain", [first.format(**kw), second.format(**kw)], _ask(rng.choice(CHAIN_QUESTIONS), rng, **kw),
                _reply([v], label, rng), [v])


VARIANTS = {"single": (single, 0.2), "kv": (kv, 0.15), "multikey": (multikey, 0.25),
            "multivalue": (multivalue, 0.15), "multiquery": (multiquery, 0.1), "chain": (chain, 0.15)}


def sample_task(rng: random.Random) -> Task:
    """A random variant with a random value type, label and needle depths (uniform over 0..1)."""
    names = list(VARIANTS)
    make = VARIANTS[rng.choices(names, weights=[VARIANTS[n][1] for n in names])[0]][0]
    kind = rng.choice(tuple(LABELS))
    task = make(rng, kind, rng.choice(LABELS[kind]))
    task.depths = [rng.random() for _ in task.needles]
    if task.variant == "multivalue":  # the answer lists the values in document order, which the depths fix
        task.values = [task.values[i] for i in document_order(task.depths)]
        task.answer = _reply(task.values, "", rng)  # two or more values: never the "The <label> is" form
    return task


def document_order(depths: list[float]) -> list[int]:
    """Needle indices in the order `hide` puts them in the document."""
    return sorted(range(len(depths)), key=lambda i: (depths[i], i))


# A sentence ends at . ! ? (optionally a closing quote or bracket) followed by whitespace, not after a title
# such as "Mr.". Cutting there is also a pre-token boundary of byte-level BPE, so tokenising the pieces one
# by one gives exactly the ids of the whole text; a needle " Sentence." put between two pieces is tokenised
# as the app would tokenise it.
SENTENCE_END = re.compile(r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)"
                          r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)\]]))(?=\s)")


def sentences(text: str) -> list[str]:
    """text cut after each sentence end; every piece but the first starts with whitespace."""
    cuts = [0] + [m.start() for m in SENTENCE_END.finditer(text)] + [len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


def hide(pieces: list[list[int]], needles: list[list[int]], depths: list[float], size: int
         ) -> tuple[list[int], list[int], list[int]]:
    """Exactly `size` haystack tokens (the last ones of `pieces`) with the needles at sentence boundaries.

    Each needle goes to the first boundary at or after its depth (0 = after the first sentence, 1 = at the end).
    Returns (ids, start of each needle in ids in the order given, needle indices in document order)."""
    total = sum(map(len, pieces))
    if total < size:
        raise ValueError(f"haystack of {total} tokens, {size} needed")
    drop, first = total - size, 0
    while drop >= len(pieces[first]):  # whole sentences off the front, then part of one
        drop -= len(pieces[first])
        first += 1
    kept = [pieces[first][drop:]] + pieces[first + 1:]
    ends, pos = [], 0
    for p in kept:
        pos += len(p)
        ends.append(pos)  # boundary after piece i
    at = [min(len(ends) - 1, bisect.bisect_left(ends, d * size)) for d in depths]
    order = document_order(depths)  # `at` grows with depth, so this is also the order of `at`
    out: list[int] = []
    starts = [0] * len(needles)
    j = 0
    for i, p in enumerate(kept):
        out += p
        while j < len(order) and at[order[j]] == i:
            starts[order[j]] = len(out)
            out += needles[order[j]]
            j += 1
    return out, starts, order
