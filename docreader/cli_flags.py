"""Flags `ask` and `chat` share beyond the model's knobs: the token limit's name (and its old spelling), the
system prompt and templates, and how an answer that did not end by itself is labelled.

`-n` was "most new tokens" in `ask`/`chat` but "how many answers" in `docreader log`; like llm, the limit is
now spelt `--max-new-tokens` in every command, and `-n` in `ask`/`chat` keeps working for one release with a
note on stderr.
"""

from __future__ import annotations

from typing import Optional

import typer

from . import templates
from .errors import DocreaderError
from .terminal import say

DEFAULT_MAX_NEW_TOKENS = 256
OLD_N_REMOVED_IN = "0.2.0"  # the release that drops `-n` from ask and chat

MaxNew = typer.Option(None, "--max-new-tokens", help=f"Most tokens to generate per answer (default "
                      f"{DEFAULT_MAX_NEW_TOKENS}). An answer cut at this limit says so.")
OldN = typer.Option(None, "-n", hidden=True, help="Deprecated spelling of --max-new-tokens.")
System = typer.Option(None, "--system", "-s", help="A system prompt for this command only (replaces the built-in "
                      "one, which asks for Quote:/Answer: lines).")
Template = typer.Option(None, "--template", "-t", help="A named prompt template (`docreader templates` lists them): "
                        "its system prompt, and its question when none is given.")
TurnBudget = typer.Option(None, "--turn-budget", help="Tokens a conversation keeps for its turns beside the "
                          "document (default 2048). The window and RoPE factor are chosen once from the document "
                          "plus this budget; older turns past it become a digest.")


def max_new_tokens(value: Optional[int], old_n: Optional[int], command: str) -> int:
    """--max-new-tokens, or the deprecated -n with a note on stderr; both at once is an error."""
    if old_n is None:
        return DEFAULT_MAX_NEW_TOKENS if value is None else value
    if value is not None:
        raise DocreaderError("give --max-new-tokens only (-n is its old spelling)")
    say(f"note: `docreader {command} -n` is deprecated and will be removed in docreader {OLD_N_REMOVED_IN}; "
        f"use --max-new-tokens {old_n} (in `docreader log`, -n is how many answers)", err=True)
    return old_n


def system_prompt(system: Optional[str], template: Optional[str]) -> tuple[Optional[str], Optional[templates.Template]]:
    """(the system prompt to use instead of the built-in one, or None; the template, if one was named)."""
    if system is not None and template is not None:
        raise DocreaderError("give -s/--system or -t/--template, not both (a template carries its own system prompt)")
    if system is not None:
        if not system.strip():
            raise DocreaderError("the system prompt (-s) is empty")
        return system, None
    if template is None:
        return None, None
    t = templates.load(template)
    return (None if t.name == templates.DEFAULT and t.source == "shipped" else t.system), t


def stop_note(reason: str, max_new: int) -> str | None:
    """A line after an answer that did not end by itself: its text is incomplete."""
    if reason == "max_tokens":
        return f"[cut off: the answer reached --max-new-tokens {max_new}; it is incomplete]"
    if reason == "interrupted":
        return "[interrupted: the answer stops here]"
    return None
