"""`docreader audit --html/--pdf` and the per-token selections behind them, on a tiny random Llama whose answer
is forced to a scripted text (the real forward passes and selections run, token by token).

The browser test drives Debian's `chromium` headless (tests/browser.py) with the network off; the PDF test
renders with poppler's `pdftoppm`/`pdftotext`. Both are installed by `make ci-deps` (run by .ci/run); without
them these tests skip, unless DOCREADER_REQUIRE_BROWSER=1 (set by .ci/run) makes a missing one a failure."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from browser import Browser, find_chromium
from corpus import make_pdf
from test_cli import expect_error, run
from test_langchain_support import CLAUSES, TINY_DSA, tiny_model_dir

from docreader import generate as gen_mod
from docreader import store, token_regions
from docreader.audit_html import render
from docreader.audit_record import load_record
from docreader.engine import Reader
from docreader.token_regions import TokenCapture, TokenRegions

QUOTE = "Either party may end this agreement with ninety (90) days written notice."
SCRIPT = f'Quote: "{QUOTE}"\nAnswer: Ninety days.'
HOSTILE = ("Minutes of the meeting.\n<script>window.__pwned = 1</script>\n<img src=x onerror=\"window.__pwned=2\">\n"
           "Either party may end this agreement with ninety (90) days written notice.\n</span></div><b>bold?</b>\n")
PAGES = ["SUPPLY AGREEMENT\n" + "\n".join(f"{i}. {c}" for i, c in enumerate(CLAUSES[:6], 1)),
         "\n".join(f"{i}. {c}" for i, c in enumerate(CLAUSES[6:12], 7)).replace(
             "Notice. Either party may end this agreement", "Notice. " + QUOTE.split(" with")[0]),
         "\n".join(f"{i}. {c}" for i, c in enumerate(CLAUSES[12:], 13))]
REQUIRE = os.environ.get("DOCREADER_REQUIRE_BROWSER") == "1"


def need(tool: str | None, name: str) -> str:
    if tool is None:
        if REQUIRE:
            pytest.fail(f"{name} is missing (make ci-deps installs it)")
        pytest.skip(f"{name} is not installed (make ci-deps)")
    return tool


def forced(monkeypatch, tokenizer, text: str) -> None:
    """Make `generate` produce exactly `text`: the prefill's logits point at its first token and `pick` returns
    the next one each step (the model still runs every step, so the selections are real)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    real_prefill = gen_mod.prefill

    def prefill(*a, **kw):
        logits, cache = real_prefill(*a, **kw)
        one_hot = torch.full_like(logits, -1e9)
        one_hot[ids[0]] = 0
        return one_hot, cache

    monkeypatch.setattr(gen_mod, "prefill", prefill)
    monkeypatch.setattr(gen_mod, "pick", lambda logits, new, *a, **kw: ids[len(new)] if len(new) < len(ids) else stop)


@pytest.fixture(scope="module")
def logged(tmp_path_factory, tokenizer):
    """A log with two answers: #1 about a 3-page PDF (the quote is on p. 2), #2 about a text file with HTML
    and a <script> in it."""
    root = tmp_path_factory.mktemp("audit")
    model = str(tiny_model_dir(root / "models"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOCREADER_HOME", str(root / "home"))
        forced(mp, tokenizer, SCRIPT)
        reader = Reader(model, TINY_DSA, disk_cache=False)
        pdf = make_pdf(root / "contract.pdf", PAGES)
        hostile = root / "minutes.txt"
        hostile.write_text(HOSTILE, encoding="utf-8")
        answers = [reader.ask(str(pdf), "What notice is needed?", max_new_tokens=64),
                   reader.ask(str(hostile), "What notice is needed?", max_new_tokens=64)]
    assert [a.id for a in answers] == [1, 2] and answers[0].text == SCRIPT
    assert answers[0].quotes[0].verified
    return root, answers


@pytest.fixture
def log_home(logged, monkeypatch):
    monkeypatch.setenv("DOCREADER_HOME", str(logged[0] / "home"))
    return logged[0]


# -- what is stored --------------------------------------------------------------------------------------------

def test_capture_maps_each_query_to_the_token_it_generated():
    class P:  # a prompt of 10 tokens: document tokens 2..8 (blocks of 2), the last prompt token at 9
        input_ids, doc_start, doc_end = list(range(10)), 2, 8
        doc_offsets = [(i * 3, i * 3 + 2) for i in range(6)]
    cap = TokenCapture(P, max_new_tokens=4, block_tokens=2)
    # the query at 9 predicts token 0 and reads doc token 6 (block 2); the one at 10 (token 1) reads 3 (block 0)
    cap.add(torch.tensor([9, 10]), torch.tensor([[6, 0], [3, -1]]).clamp(min=0), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    tr = cap.finish(P, 20, [5, 20], torch.ones(6), 18)
    assert tr.picks[:, 0].tolist() == [2, 0] and tr.weights[:, 0].tolist() == [255, 255]
    assert tr.bounds.tolist() == [0, 6, 12, 18] and tr.token_ends.tolist() == [5, 20]


def test_token_regions_are_stored_compactly_and_read_back(logged):
    root, answers = logged
    tr = answers[0].token_regions
    assert tr.tokens == answers[0].new_tokens and tr.blocks >= 10
    ends = tr.token_ends.tolist()
    assert ends == sorted(ends) and ends[-1] == len(SCRIPT)  # the tokens cut the answer text exactly
    back = token_regions.load(store.open_db(root / "home" / "docreader.db"), answers[0].id)
    for name in ("bounds", "heat", "token_ends", "picks", "weights"):
        assert np.array_equal(getattr(back, name), getattr(tr, name)), name
    assert len(tr.encode()) < 2048  # ~25 tokens over a 3-page PDF
    for bad in (tr.encode()[:-3], zlib.compress(zlib.decompress(tr.encode()) + b"\0"), b"not a blob"):
        with pytest.raises(ValueError):
            TokenRegions.decode(bad)


# -- the HTML page -----------------------------------------------------------------------------------------------

def test_page_escapes_the_document_and_fetches_nothing(log_home):
    page = render(load_record(store.open_db(), 2))
    assert "<script>window.__pwned" not in page and "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    assert "<img" not in page and "<b>bold" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in html.unescape(page)
    links = re.findall(r"""<[a-z]+\s[^>]*?\b(?:src|href|action)=["']?([^"' >]*)""", page)
    assert links and all(u.startswith("#") for u in links), links  # only links within the page


def test_audit_page_in_a_headless_browser(log_home, tmp_path):
    chromium = need(find_chromium(), "chromium")
    pages = {n: tmp_path / f"audit-{n}.html" for n in (1, 2)}
    for n, path in pages.items():
        assert f"wrote {path}" in run("audit", n, "--html", path).stdout
    browser = Browser(chromium)
    try:
        browser.open_offline(pages[1].as_uri())
        ev = browser.eval
        assert ev("document.querySelector('#doc .q').textContent") in QUOTE
        assert ev("Array.from(document.querySelectorAll('#doc .q')).map(e => e.textContent).join('')") == QUOTE
        assert ev("document.querySelector('#quote-1').closest('section').id") == "page-2"
        assert ev("document.querySelectorAll('#doc [style*=\"--h\"]').length") > 10  # the heat map
        assert ev("document.querySelectorAll('#spans a').length") == ev("document.querySelectorAll('#doc [id^=span-]').length") > 0
        assert ev("document.querySelectorAll('#doc .t').length") == 0
        chosen = "Array.from(document.querySelectorAll('#doc .t')).map(e => e.dataset.b).join()"
        ev("document.querySelector('.tok[data-t=\"0\"]').click()")
        first = ev(chosen)
        n = ev("document.querySelectorAll('.tok').length")
        others = set()
        for t in range(1, n):
            ev(f"document.querySelector('.tok[data-t=\"{t}\"]').click()")
            others.add(ev(chosen))
        assert first and others - {first}, "clicking another answer token must change the highlighted blocks"
        assert "the indexer selected" in ev("document.getElementById('tokinfo').textContent")
        shot = browser.screenshot(tmp_path / "audit.png")
        assert browser.requests() == [pages[1].as_uri()]  # nothing else was fetched
        browser.open_offline(pages[2].as_uri())
        assert ev("typeof window.__pwned") == "undefined"
        text = ev("document.getElementById('doc').textContent")
        assert "<script>window.__pwned = 1</script>" in text and "<b>bold?</b>" in text
        assert ev("document.querySelectorAll('#doc img, #doc b, #doc script').length") == 0
    finally:
        browser.close()
    from PIL import Image
    img = Image.open(shot).convert("RGB")
    colors = img.getcolors(1 << 20)
    assert img.size[0] >= 800 and colors and len(colors) > 50  # not blank
    blue = sum(c for c, (r, g, b) in colors if b > 200 and r < 170 and g < 200)  # the chosen token's blocks
    assert blue > 100


# -- the highlighted PDF -----------------------------------------------------------------------------------------

def render_pages(pdf: Path, out: Path) -> list[np.ndarray]:
    subprocess.run([need(shutil.which("pdftoppm"), "pdftoppm"), "-r", "50", str(pdf), str(out)], check=True)
    from PIL import Image
    return [np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in sorted(out.parent.glob(out.name + "*"))]


def pdf_text(pdf: Path) -> str:
    return subprocess.run([need(shutil.which("pdftotext"), "pdftotext"), str(pdf), "-"], check=True,
                          capture_output=True, text=True).stdout


def test_pdf_highlights_the_quote_on_its_page_only(log_home, tmp_path):
    original = log_home / "contract.pdf"
    marked = tmp_path / "marked.pdf"
    shown = run("audit", 1, "--pdf", marked, "--spans", 0).stdout
    assert "1 quote and 0 span highlights on p. 2" in shown
    before, after = render_pages(original, tmp_path / "a"), render_pages(marked, tmp_path / "b")
    assert len(before) == len(after) == 3
    changed = [int((np.abs(a - b).sum(-1) > 30).sum()) for a, b in zip(before, after)]
    assert changed[0] == changed[2] == 0 and changed[1] > 200, changed
    diff = np.abs(after[1] - before[1]).sum(-1) > 30
    r, g, b = (after[1][..., i][diff] for i in range(3))
    assert ((g > r + 20) & (g > b + 20)).sum() > 100  # green: a verified quote
    rows = np.nonzero(((after[1][..., 1] > after[1][..., 0] + 20) & diff).any(1))[0]
    line = next(i for i, t in enumerate(PAGES[1].split("\n")) if "ninety" in t)
    top = (792 - 740 + 14 * line - 11) * 50 / 72  # where the quoted line is drawn (tests/corpus.py: 14 pt lines)
    assert abs(rows.mean() - (top + 8)) < 12, (rows.min(), rows.max(), top)
    assert pdf_text(marked) == pdf_text(original)  # the text layer is unchanged


def test_pdf_spans_and_the_note(log_home, tmp_path):
    from pypdf import PdfReader
    marked = tmp_path / "marked.pdf"
    run("audit", 1, "--pdf", marked)
    annots = [(i, a.get_object()) for i, p in enumerate(PdfReader(marked).pages) for a in p.get("/Annots", [])]
    kinds = [a["/Subtype"] for _, a in annots]
    assert kinds.count("/Highlight") >= 2 and kinds.count("/Text") == 1
    note = next(a for _, a in annots if a["/Subtype"] == "/Text")["/Contents"]
    assert "Q: What notice is needed?" in note and "Answer: Ninety days." in note


def test_bad_audit_requests(log_home, tmp_path):
    target = tmp_path / "x.pdf"
    page = tmp_path / "x.html"
    expect_error("audit", 2, "--pdf", target, "--html", page, name="minutes.txt", reason="--pdf needs a PDF")
    expect_error("audit", 1, "--open", reason="--open opens the --html page")
    expect_error("audit", 1, "--html", tmp_path / "no" / "x.html", name="x.html", reason="folder does not exist")
    moved = log_home / "contract.pdf"
    data = moved.read_bytes()
    try:
        make_pdf(moved, PAGES[:2])
        expect_error("audit", 1, "--pdf", target, name="contract.pdf", reason="differs from the text the answer was logged with")
    finally:
        moved.write_bytes(data)
    assert not target.exists() and not page.exists() and not list(tmp_path.glob(".*part"))


def test_open_uses_the_default_browser(log_home, tmp_path, monkeypatch):
    seen = tmp_path / "opened.txt"
    monkeypatch.setenv("BROWSER", f"sh -c 'echo \"$0\" > {seen}' %s")
    import webbrowser
    monkeypatch.setattr(webbrowser, "_tryorder", None)  # re-read $BROWSER
    page = tmp_path / "p.html"
    run("audit", 1, "--html", page, "--open")
    import time
    for _ in range(50):
        if seen.exists() and seen.read_text().strip():
            break
        time.sleep(0.1)
    assert seen.read_text().strip() == page.resolve().as_uri()


def test_langchain_audit_tool_returns_the_page(log_home, tmp_path):
    from docreader.langchain import docreader_tools
    tool = {t.name: t for t in docreader_tools(root_dir=str(log_home), audit_html_dir=str(tmp_path))}["audit_answer"]
    msg = tool.invoke({"type": "tool_call", "name": "audit_answer", "args": {"answer_id": 1}, "id": "c1"})
    assert msg.artifact == str(tmp_path / "docreader-audit-1.html") and Path(msg.artifact).exists()
    assert "Audit page:" in msg.content and "What notice is needed?" in Path(msg.artifact).read_text()
