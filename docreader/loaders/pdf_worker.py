"""A child process that extracts a range of PDF pages, started by `pdf_pages.worker_command()`.

Reads one JSON header line ({"start", "stop", "password"}) then the PDF bytes on stdin; writes
{"texts": [...], "failed": [...]} as JSON on stdout. A fresh interpreter (not multiprocessing) so
the caller's __main__ is never re-imported and no CUDA/threads state is forked.
"""

from __future__ import annotations

import io
import json
import logging
import sys


def main() -> None:
    from pypdf import PdfReader

    from docreader.loaders.pdf_pages import extract_serial

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    header = json.loads(sys.stdin.buffer.readline())
    data = sys.stdin.buffer.read()
    reader = PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted:
        password = header.get("password")
        reader.decrypt(password if password is not None else "")
    texts, failed = extract_serial(reader, range(header["start"], header["stop"]))
    sys.stdout.write(json.dumps({"texts": texts, "failed": failed}))


if __name__ == "__main__":
    main()
