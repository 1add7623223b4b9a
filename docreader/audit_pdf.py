"""`docreader audit ID --pdf FILE`: the original PDF with the answer's verified quotes (green) and its top
selected spans (yellow) highlighted on their pages, and a note with the question and answer.

Only annotations are added (pypdf's Highlight and Text), so the pages' content and text layer stay as they
were. Where a passage lies on its page comes from pypdf's layout-mode text runs (each run's baseline, start
and end x): the page's runs are joined in reading order, the passage is found in them with whitespace and
case ignored, and each run it covers gets a quad, its x range interpolated by character position (exact for
monospaced runs, close for the rest). A passage that cannot be found on its page is reported, not guessed.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass

from .audit_record import AuditRecord
from .errors import DocreaderError

QUOTE_COLOR = "33cc33"
SPAN_COLOR = "ffd400"


@dataclass
class Run:
    """A line's worth of text drawn by one BT…ET block: baseline y, start and end x, font height."""

    text: str
    x0: float
    x1: float
    y: float
    height: float


@dataclass
class Placed:
    """A passage put on a page: what it is, its page (0-based) and its boxes (x0, y0, x1, y1)."""

    kind: str  # "quote" | "span"
    label: str
    page: int
    boxes: list[tuple[float, float, float, float]]


def page_runs(page) -> list[Run]:
    """The page's text runs with positions: pypdf's layout-mode text state, walked into form XObjects (which
    layout mode skips; scanned-then-OCRed and HTML-printed PDFs draw their text in one)."""
    from pypdf.generic import ArrayObject, StreamObject

    contents = page.get("/Contents")
    contents = contents.get_object() if contents is not None else None
    if not isinstance(contents, (ArrayObject, StreamObject)):
        return []
    groups: list[dict] = []
    _walk(page.pdf, contents, page.get("/Resources"), [], groups, depth=0)
    groups.sort(key=lambda g: (-g["ty"] * g["flip_sort"], g["tx"]))
    return [Run(g["text"], g["tx"], g["displaced_tx"], g["ty"], g["font_height"] or g["font_size"])
            for g in groups if g["text"].strip()]


def _walk(pdf, contents, resources, outer: list[list[float]], out: list[dict], depth: int) -> None:
    """Text groups of one content stream into `out`; `outer`: the cm matrices in force where it is drawn."""
    from pypdf.generic import ContentStream, DictionaryObject
    from pypdf.generic._font import Font
    from pypdf._text_extraction._layout_mode._fixed_width_page import recurse_to_target_op, set_font_operation
    from pypdf._text_extraction._layout_mode._text_state_manager import TextStateManager

    resources = resources.get_object() if resources is not None else DictionaryObject()
    font_res = resources.get("/Font")
    font_res = font_res.get_object() if font_res is not None else {}
    fonts = {name: Font.from_font_resource(f.get_object()) for name, f in font_res.items()
             if isinstance(f.get_object(), DictionaryObject)}
    xobjects = resources.get("/XObject")
    xobjects = xobjects.get_object() if xobjects is not None else {}
    state = TextStateManager()
    for m in outer:
        state.add_cm(*m)
    stack: list[list[list[float]]] = [list(outer)]
    ops = iter(ContentStream(contents, pdf, "bytes").operations)
    for operands, op in ops:
        if op == b"BT":
            out.extend(recurse_to_target_op(ops, state, b"ET", fonts, True)[0])
        elif op == b"q":
            state.add_q()
            stack.append(list(stack[-1]))
        elif op == b"Q" and len(stack) > 1:
            state.remove_q()
            stack.pop()
        elif op == b"cm":
            state.add_cm(*operands)
            stack[-1].append([float(v) for v in operands])
        elif op == b"Tf":
            set_font_operation(state, fonts, operands)
        elif op == b"Do" and depth < 8:
            xo = xobjects.get(operands[0]) if operands else None
            xo = xo.get_object() if xo is not None else None
            if xo is not None and xo.get("/Subtype") == "/Form":
                matrix = [float(v) for v in xo.get("/Matrix", [1, 0, 0, 1, 0, 0])]
                _walk(pdf, xo, xo.get("/Resources", resources), stack[-1] + [matrix], out, depth + 1)
        else:
            state.set_state_param(op, operands)


_KEEP = re.compile(r"\w", re.UNICODE)


def _folded(text: str) -> tuple[str, list[int]]:
    """Letters and digits only, lower-cased, with each kept character's index in `text`."""
    idx = [i for i, c in enumerate(text) if _KEEP.match(c)]
    return "".join(text[i] for i in idx).lower(), idx


def locate(runs: list[Run], passage: str) -> list[tuple[float, float, float, float]]:
    """Boxes covering `passage` in the runs, one per run it touches ([] when it is not found)."""
    joined = "\n".join(r.text for r in runs)
    starts, at = [], 0
    for r in runs:
        starts.append(at)
        at += len(r.text) + 1
    hay, hay_idx = _folded(joined)
    needle, _ = _folded(passage)
    if not needle:
        return []
    hit = hay.find(needle)
    if hit < 0:
        return []
    a, b = hay_idx[hit], hay_idx[hit + len(needle) - 1] + 1  # chars [a, b) of `joined`
    boxes = []
    for r, s in zip(runs, starts):
        lo, hi = max(a, s), min(b, s + len(r.text))
        while lo < hi and r.text[lo - s].isspace():  # a run's indentation is not part of the passage
            lo += 1
        while hi > lo and r.text[hi - 1 - s].isspace():
            hi -= 1
        if lo >= hi:
            continue
        n = max(len(r.text), 1)
        x0 = r.x0 + (r.x1 - r.x0) * (lo - s) / n
        x1 = r.x0 + (r.x1 - r.x0) * (hi - s) / n
        boxes.append((x0, r.y - 0.25 * r.height, x1, r.y + 0.85 * r.height))
    return boxes


def _passages(rec: AuditRecord, spans: int) -> list[tuple[str, str, int, int]]:
    """(kind, label, char_start, char_end) of the verified quotes and the top `spans` spans."""
    out = [("quote", q.get("label") or "", q["char_start"], q["char_end"]) for q in rec.quotes
           if q.get("verified") and q.get("char_start") is not None]
    out += [("span", f"span {s['rank']} ({s.get('label') or ''})", s["char_start"], s["char_end"])
            for s in rec.spans[:spans]]
    return out


def _open_original(rec: AuditRecord):
    """The logged document's PDF, checked to still hold the text the answer was about."""
    from pypdf import PdfReader

    from .loaders import load as load_document

    path = rec.document.path
    if rec.document.format != "pdf":
        raise DocreaderError(f"answer #{rec.answer['id']} is about a {rec.document.format} document; --pdf needs a "
                             f"PDF (use --html)", path=path)
    current = load_document(path, format="pdf")  # a missing, unreadable or encrypted file fails here, one line
    if current.sha256 != rec.document_sha256:
        raise DocreaderError("its text differs from the text the answer was logged with (the file changed since, or "
                             "docreader's PDF extraction did)", path=path)
    with open(path, "rb") as f:
        data = f.read()
    reader = PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted:
        raise DocreaderError("encrypted PDF: --pdf needs a copy without a password", path=path)
    return reader


def annotate(rec: AuditRecord, spans: int = 5) -> tuple[bytes, list[Placed]]:
    """The annotated PDF's bytes and where each passage went; passages not found on their page are left out
    (and absent from the list)."""
    from pypdf import PdfWriter
    from pypdf.annotations import Highlight, Text
    from pypdf.generic import ArrayObject, FloatObject

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = _open_original(rec)
    writer = PdfWriter(clone_from=reader)
    pages = sorted((r for r in rec.document.regions if r.kind == "page"), key=lambda r: r.start)
    runs: dict[int, list[Run]] = {}
    placed: list[Placed] = []
    for kind, label, start, end in _passages(rec, spans):
        for region in pages:
            a, b = max(start, region.start), min(end, region.end)
            if a >= b:
                continue
            i = region.meta.get("page", region.index + 1) - 1
            if i not in runs:
                runs[i] = page_runs(reader.pages[i])
            boxes = locate(runs[i], rec.document.text[a:b])
            if boxes:
                placed.append(Placed(kind, label, i, boxes))
    for p in placed:
        quads = ArrayObject(FloatObject(v) for x0, y0, x1, y1 in p.boxes for v in (x0, y1, x1, y1, x0, y0, x1, y0))
        rect = (min(b[0] for b in p.boxes), min(b[1] for b in p.boxes), max(b[2] for b in p.boxes),
                max(b[3] for b in p.boxes))
        writer.add_annotation(p.page, Highlight(rect=rect, quad_points=quads, printing=True,
                                                highlight_color=QUOTE_COLOR if p.kind == "quote" else SPAN_COLOR))
    a = rec.answer
    note_page = placed[0].page if placed else 0
    box = reader.pages[note_page].mediabox
    x, y = float(box.left) + 4, float(box.top) - 24
    quotes = "".join(f"\nQuoted ({q['label']}): \"{q['text']}\"" for q in rec.quotes if q.get("verified"))
    where = ", ".join(f"{p.kind} on p. {p.page + 1}" for p in placed) or "none found on their pages"
    note = (f"docreader answer #{a['id']} ({a['model']}, {a['mode']} attention)\nQ: {a['question']}\n"
            f"A: {a['answer']}{quotes}\nHighlighted: {where} (green: verified quotes; yellow: the spans the "
            f"indexer selected most, not proof of use)")
    writer.add_annotation(note_page, Text(rect=(x, y, x + 20, y + 20), text=note, open=False))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue(), placed
