"""Properties of every generated document: regions lie in the text, never overlap within a kind, and
`locate` names exactly the regions a range touches (both ends when it crosses a boundary)."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402

from docreader.document import Document  # noqa: E402
from docreader.loaders.chat import Message, render_chat  # noqa: E402
from docreader.loaders.markdown import load_markdown  # noqa: E402
from docreader.loaders.pdf import load_pdf  # noqa: E402

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=0, max_size=30)
line = st.text(alphabet="abcdefghij klmnop.,;", min_size=1, max_size=40)


@st.composite
def chats(draw) -> Document:
    n = draw(st.integers(1, 25))
    threads = draw(st.booleans())
    messages = [Message(speaker=draw(st.sampled_from(["alice", "bob", "Ça va", "x y"])),
                        text=draw(words) + draw(st.sampled_from(["", "\nmore", "\r\n\nend"])),
                        time=draw(st.sampled_from([None, "14:03", "00:00"])),
                        date=draw(st.sampled_from([None, "2024-01-01", "2024-01-02"])),
                        kind=draw(st.sampled_from(["message", "message", "action", "system"])),
                        thread=(f"thread {i // 5}" if threads else None))
                for i in range(n)]
    return render_chat("chat.json", messages, {})


@st.composite
def markdowns(draw) -> Document:
    parts = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["atx", "para", "setext", "fence"]))
        if kind == "atx":
            parts.append("#" * draw(st.integers(1, 6)) + " " + draw(line).strip() + "x")
        elif kind == "setext":
            parts.append(draw(line).strip() + "y\n" + draw(st.sampled_from(["===", "---"])))
        elif kind == "fence":
            parts.append("```\n# not a heading\n```")
        else:
            parts.append(draw(line))
    text = draw(st.sampled_from(["\n\n", "\n"])).join(parts)
    return load_markdown("book.md", text, "utf-8")


@st.composite
def pdfs(draw) -> Document:
    pages = draw(st.lists(st.text(alphabet="abcdefgh XYZ0123.\n", min_size=1, max_size=60).filter(str.strip),
                          min_size=1, max_size=6))
    return load_pdf("doc.pdf", corpus.pdf_bytes(pages))


documents = st.one_of(chats(), markdowns(), pdfs())


def _by_kind(doc: Document) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in doc.regions:
        out.setdefault(r.kind, []).append(r)
    return out


@FAST
@given(documents)
def test_regions_inside_text_sorted_and_disjoint(doc):
    assert doc.regions == sorted(doc.regions, key=lambda r: (r.start, r.end, r.kind))
    for r in doc.regions:
        assert 0 <= r.start < r.end <= len(doc.text), r
        assert r.label
    for kind, regions in _by_kind(doc).items():
        assert [r.index for r in regions] == list(range(len(regions)))
        for a, b in zip(regions, regions[1:]):
            assert a.end <= b.start, (a, b)


@FAST
@given(chats())
def test_chat_messages_are_single_lines(doc):
    for r in doc.regions:
        if r.kind == "message":
            rendered = doc.text[r.start:r.end]
            assert "\n" not in rendered and "\r" not in rendered
            assert r.label.startswith(f"message {r.index + 1} — {r.meta['speaker']}")


@FAST
@given(documents, st.data())
def test_locate_names_the_regions_a_range_touches(doc, data):
    start = data.draw(st.integers(0, len(doc.text) - 1))
    end = data.draw(st.integers(start, len(doc.text)))
    loc = doc.locate(start, end)
    assert loc["line"] == doc.text.count("\n", 0, start) + 1
    assert loc["line"] <= loc["line_end"]
    stop = max(end, start + 1)
    for kind, regions in _by_kind(doc).items():
        hits = [r for r in regions if r.start < stop and start < r.end]
        assert doc.regions_at(start, end) == [r for r in doc.regions if r.start < stop and start < r.end]
        if not hits:
            assert kind not in loc
            continue
        assert loc[kind] == hits[0].index + 1
        assert hits[0].label in loc["label"]
        if len(hits) > 1:
            assert loc[f"{kind}_end"] == hits[-1].index + 1 and hits[-1].label in loc["label"]
        else:
            assert f"{kind}_end" not in loc
        if kind == "page":
            assert loc["page_label"] == hits[0].meta["page_label"]
        if kind == "message":
            assert loc["speaker"] == hits[0].meta["speaker"]


@FAST
@given(st.one_of(chats(), pdfs()), st.data())
def test_range_across_a_boundary_reports_both_ends(doc, data):
    kind = "page" if doc.format == "pdf" else "message"
    regions = [r for r in doc.regions if r.kind == kind]
    if len(regions) < 2:
        return
    i = data.draw(st.integers(0, len(regions) - 2))
    a, b = regions[i], regions[i + 1]
    start = data.draw(st.integers(a.start, a.end - 1))
    end = data.draw(st.integers(b.start + 1, b.end))
    loc = doc.locate(start, end)
    assert loc[kind] == a.index + 1 and loc[f"{kind}_end"] == b.index + 1
    assert f"{a.label} – {b.label}" in loc["label"]
