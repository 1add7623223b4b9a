"""The `docreader` console script: ask and chat go to a running `docreader serve` before the CLI is imported.

Why: importing the CLI (typer, sqlite-utils, numpy) takes 0.6-0.8 s on a 2-core machine, a fifth of a served
answer's first token, and a served command never needs it here: the server's child already has it. So this
module imports only docreader.server (stdlib) to forward; everything else imports the CLI as before. After a
command answered here, a keep-alive server may be started for the next one (docreader.server says when)."""

from __future__ import annotations

import os
import sys


def main() -> None:
    from . import server
    argv, env = sys.argv[1:], dict(os.environ)
    code = server.forward(argv)
    if code is not None:
        sys.exit(code)
    from .cli import app
    try:
        app()
    except SystemExit as done:
        if done.code in (0, None) and server.keep_alive_wanted(argv):  # answered here: keep the model for next time
            server.start_in_background(env)
        raise


if __name__ == "__main__":
    main()
