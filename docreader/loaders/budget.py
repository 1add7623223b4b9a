"""What one load may produce and spend, checked as text is produced, so no file can hang or blow up a load.

The byte limit (limits.py) caps what is read; a small file can still expand (an EPUB spine listing one
chapter 9,000 times, a PDF drawing one form 5,000 times). Every loader therefore charges the text it
writes to one `Budget`, which stops the load as soon as the text could no longer fit the model's window,
or when the load has run out of wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from docreader.errors import DocreaderError
from docreader.loaders.limits import env_count, human_size

MAX_TOKENS_ENV = "DOCREADER_MAX_TOKENS"
DEFAULT_MAX_TOKENS = 262_144  # whole books: the 8,192-token native window × YaRN 32 (the model's own window may be less)
CHARS_PER_TOKEN_MAX = 8  # no real text averages more characters a token: longer text cannot fit, whatever the tokenizer
CHARS_PER_TOKEN = 4  # typical English for the estimate in messages (~1 MB of text in 256k tokens)
BYTES_PER_CHAR_MAX = 16  # raw text bytes per character we allow before decoding (UTF-32, or HTML markup)
LOAD_SECONDS_ENV = "DOCREADER_LOAD_SECONDS"
DEFAULT_LOAD_SECONDS = 120


@dataclass
class Budget:
    """Output characters and wall time left to one load of `path`."""

    path: str
    max_tokens: int = DEFAULT_MAX_TOKENS
    seconds: float = DEFAULT_LOAD_SECONDS
    chars: int = 0
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def from_env(cls, path: str, max_tokens: int | None = None) -> Budget:
        """`max_tokens`, else $DOCREADER_MAX_TOKENS; seconds from $DOCREADER_LOAD_SECONDS; else the defaults."""
        if max_tokens is not None and max_tokens <= 0:
            raise DocreaderError(f"max_tokens must be positive, got {max_tokens}")
        return cls(path, max_tokens or env_count(MAX_TOKENS_ENV, DEFAULT_MAX_TOKENS, "tokens"),
                   env_count(LOAD_SECONDS_ENV, DEFAULT_LOAD_SECONDS, "seconds"))

    @property
    def max_chars(self) -> int:
        return self.max_tokens * CHARS_PER_TOKEN_MAX

    def _too_long(self, amount: str, tokens: int) -> DocreaderError:
        return DocreaderError(f"too long: {amount} is ~{tokens:,} tokens (at ~{CHARS_PER_TOKEN} characters a token), "
                              f"more than the {self.max_tokens:,}-token model window ({MAX_TOKENS_ENV})",
                              path=self.path)

    def check_text_bytes(self, n: int) -> None:
        """Refuse raw text that cannot fit before decoding (and sniffing, and parsing) any of it."""
        if n > BYTES_PER_CHAR_MAX * self.max_chars:
            raise self._too_long(f"{human_size(n)} of text", n // CHARS_PER_TOKEN)

    def add(self, n: int) -> None:
        """Charge `n` characters of document text just produced; stop when they cannot fit the window."""
        self.chars += n
        if self.chars > self.max_chars:
            raise self._too_long(f"the text passes {self.max_chars:,} characters, which", self.chars // CHARS_PER_TOKEN)
        self.check_time()

    def seconds_left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def check_time(self, doing: str = "") -> None:
        """Stop a load that has run past its wall-time budget (called between pages, items and blocks)."""
        if self.seconds_left() < 0:
            raise self.out_of_time(doing)

    def out_of_time(self, doing: str = "") -> DocreaderError:
        where = f" ({doing})" if doing else ""
        return DocreaderError(f"loading took over the {self.seconds:g} s limit{where} ({LOAD_SECONDS_ENV})",
                              path=self.path)
