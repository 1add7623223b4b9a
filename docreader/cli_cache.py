"""`docreader cache`: the document cache (docreader.doccache) from the command line."""

from __future__ import annotations

import json
import time

import typer

from . import doccache
from .loaders import parsed
from .terminal import friendly, say

cache_app = typer.Typer(no_args_is_help=True, help="The document cache: documents already read, kept so the next "
                        "question about them starts at once (in $DOCREADER_HOME/cache, at most $DOCREADER_CACHE_MB MB).")


def use_cache_messages(json_out: bool) -> None:
    """The document cache's notes on stderr as plain lines; its 'read from cache' line only for people."""
    doccache.note = lambda m: say(f"docreader: {m}", err=True)
    doccache.info = (lambda m: None) if json_out else (lambda m: say(m, err=True))


@cache_app.command("list")
@friendly
def cache_list(json_out: bool = typer.Option(False, "--json")):
    """Cached documents, most recently used first."""
    rows = [{"file": str(e.path), "bytes": e.bytes, "tokens": e.tokens, "document": e.document, "model": e.model,
             "last_used": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.used))} for e in doccache.entries()]
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        say(f"the document cache is empty ({doccache.cache_dir()})")
    for r in rows:
        say(f"{r['last_used']}  {r['bytes'] / 2**20:8.1f} MB  {r['tokens']:>9,} tokens  {r['model']}  {r['document']}")
    total = sum(r["bytes"] for r in rows)
    if rows:
        say(f"{len(rows)} entries, {total / 2**20:.1f} MB of at most {doccache.limit_bytes() / 2**20:.0f} MB "
            f"(${doccache.SIZE_ENV})")
    kept = len(list(parsed.parsed_dir().glob("*.json"))) if parsed.parsed_dir().exists() else 0
    if kept:
        say(f"and {kept} parsed PDF/DOCX/EPUB files (at most {parsed.MAX_ENTRIES}) in {parsed.parsed_dir()}")


@cache_app.command("clear")
@friendly
def cache_clear():
    """Delete every cached document and parsed file (answers and the log are kept)."""
    n = len(doccache.entries())
    freed = doccache.clear()
    say(f"removed {n} entries, {freed / 2**20:.1f} MB, and {parsed.evict(0)} parsed documents")


@cache_app.command("path")
@friendly
def cache_path():
    """Print the cache directory."""
    say(str(doccache.cache_dir()))
