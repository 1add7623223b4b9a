"""Time `load()` on real documents: every PDF in a directory, a long book, a synthetic ≥300-page PDF.

    python bench/load_speed.py [PDF_DIR] [--book PATH] [--tokenizer DIR] [--pages 300]

Prints a markdown table (file, format, pages, chars, seconds[, tokens, tok seconds]).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from docreader.loaders import load  # noqa: E402


def synthetic_pdf(sources: list[Path], pages: int, out: Path) -> Path:
    """Concatenate pages of the given PDFs (cycling through them) until there are `pages` pages."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    readers = [PdfReader(p) for p in sources]
    while len(writer.pages) < pages:
        for reader in readers:
            for page in reader.pages:
                if len(writer.pages) >= pages:
                    break
                writer.add_page(page)
    with out.open("wb") as f:
        writer.write(f)
    return out


def _tokenizer(path: str | None):
    if not path:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def measure(path: Path, tok) -> dict:
    t0 = time.perf_counter()
    doc = load(path, max_tokens=1_000_000)  # time whole books and long PDFs, not just what fits a 32k window
    seconds = time.perf_counter() - t0
    row = {"file": path.name if len(path.name) <= 60 else path.name[:57] + "…", "format": doc.format,
           "pages": doc.meta.get("pages", "–"), "chars": len(doc.text), "seconds": seconds}
    if tok is not None:
        t0 = time.perf_counter()
        ids = tok(doc.text, add_special_tokens=False)["input_ids"]
        row.update(tokens=len(ids), tok_seconds=time.perf_counter() - t0)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pdf_dir", nargs="?", default=str(ROOT.parent / "shared" / "data" / "cuad" / "pdf"))
    ap.add_argument("--book", default=str(ROOT / "sample_docs" / "pride_and_prejudice.md"))
    ap.add_argument("--tokenizer", default=None, help="tokenizer directory (optional)")
    ap.add_argument("--pages", type=int, default=300, help="pages in the synthetic PDF")
    args = ap.parse_args()

    tok = _tokenizer(args.tokenizer)
    pdfs = sorted(Path(args.pdf_dir).glob("*.pdf")) if Path(args.pdf_dir).is_dir() else []
    if not pdfs:
        pdfs = sorted((ROOT / "sample_docs").glob("*.pdf"))
        print(f"(no PDFs in {args.pdf_dir}; using sample_docs)", file=sys.stderr)
    rows = [measure(p, tok) for p in pdfs]
    if Path(args.book).is_file():
        rows.append(measure(Path(args.book), tok))
    with tempfile.TemporaryDirectory() as tmp:
        big = synthetic_pdf(pdfs, args.pages, Path(tmp) / f"synthetic_{args.pages}_pages.pdf")
        rows.append(measure(big, tok))

    cols = ["file", "format", "pages", "chars", "seconds"] + (["tokens", "tok_seconds"] if tok else [])
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" if c in ("file", "format") else "---:" for c in cols) + "|")
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
