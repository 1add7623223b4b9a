"""`docreader serve` on the command line (docreader.server says why and how; docreader.entry is the console
script that hands ask/chat to it)."""

from __future__ import annotations

import typer

from .terminal import friendly, in_range, say


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
