"""`docreader audit ID --html FILE [--open]` and `--pdf FILE`: the audit views written to files.

Files are written whole or not at all (a temp file beside the target, then renamed), and every failure is one
`DocreaderError` naming the file."""

from __future__ import annotations

import os
import tempfile
import webbrowser
from pathlib import Path

from .audit_record import AuditRecord
from .errors import DocreaderError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: bytes) -> Path:
    """`data` to `path` through a temp file in the same folder and a rename: never a half-written file."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise DocreaderError("is a directory", path=str(path))
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise DocreaderError("its folder does not exist", path=str(path))
    tmp = None
    try:
        with tempfile.NamedTemporaryFile("wb", dir=folder, prefix=f".{path.name}.", suffix=".part",
                                         delete=False) as f:
            tmp = f.name
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # a temp file is private (0600); the result gets the usual mode
        os.replace(tmp, path)
    except OSError as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise DocreaderError(f"cannot write it ({e.strerror or e})", path=str(path)) from None
    return path.resolve()


def write_html(rec: AuditRecord, path: str | Path, open_it: bool = False) -> Path:
    """The audit page (`docreader.audit_html`) to `path`; `open_it`: show it in the default browser."""
    from .audit_html import render

    out = write_atomic(path, render(rec).encode("utf-8"))
    if open_it:
        webbrowser.open(out.as_uri())
    return out


PDF_SPANS = 5  # spans highlighted in a PDF at most: past a few, highlights say less than the HTML heat map


def write_pdf(rec: AuditRecord, path: str | Path, spans: int = PDF_SPANS) -> str:
    """The original PDF with the verified quotes and the top `spans` spans highlighted (`docreader.audit_pdf`);
    -> a line saying where it went and which passages were placed on which pages."""
    from .audit_pdf import annotate

    data, placed = annotate(rec, spans)
    out = write_atomic(path, data)
    pages = sorted({p.page + 1 for p in placed})
    where = (f"{sum(p.kind == 'quote' for p in placed)} quote and {sum(p.kind == 'span' for p in placed)} span "
             f"highlights on p. {', '.join(map(str, pages))}") if placed else "no passage could be placed on its page"
    return f"{out} ({where})"
