"""`docreader serve` on the command line, and the entry point that hands ask/chat to a running server
(docreader.server says why and how)."""

from __future__ import annotations

import sys

import typer

from .terminal import friendly, in_range, say


class ServedTyper(typer.Typer):
    """The `docreader` entry point: ask and chat go to a running `docreader serve` when it can take them."""

    def __call__(self, *args, **kwargs):
        if not args and not kwargs:  # the console script (tests and the server's children pass args)
            from .server import forward
            code = forward(sys.argv[1:])
            if code is not None:
                sys.exit(code)
        return super().__call__(*args, **kwargs)


@friendly
def serve_cmd(idle: float = typer.Option(30, "--idle", help="Minutes without a command before it stops."),
              stop: bool = typer.Option(False, "--stop", help="Stop the running server.")):
    """Keep the model loaded: later `ask` and `chat` commands (same user, same $DOCREADER_HOME) start answering
    in about a second instead of seven. Runs until Ctrl-C, --stop or --idle minutes without a command."""
    from . import server
    if stop:
        say("stopped" if server.stop() else "no docreader server is running")
        return
    in_range("--idle", int(idle), 0)
    server.serve(idle * 60, say=say)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
