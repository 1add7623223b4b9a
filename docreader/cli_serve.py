"""`docreader serve` on the command line, and the entry point that hands ask/chat to a running server
(docreader.server says why and how)."""

from __future__ import annotations

import os
import sys

import typer

from .terminal import friendly, in_range, say


class ServedTyper(typer.Typer):
    """The `docreader` entry point: ask and chat go to a running `docreader serve` when it can take them."""

    def __call__(self, *args, **kwargs):
        if args or kwargs:  # tests and the server's children pass args
            return super().__call__(*args, **kwargs)
        from . import server  # the console script
        argv, env = sys.argv[1:], dict(os.environ)
        code = server.forward(argv)
        if code is not None:
            sys.exit(code)
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as done:
            if done.code in (0, None) and server.keep_alive_wanted(argv):  # answered here: keep the model for next time
                server.start_in_background(env)
            raise


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
