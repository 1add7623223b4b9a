"""One exception type for everything a user can get wrong.

The CLI turns a `DocreaderError` into a single line on stderr and a non-zero exit, never a traceback.
"""


def one_line(text: str) -> str:
    """`text` with control and other unprintable characters escaped (\\n, \\x1b, \\u202e), so a file name
    or a message quoting a file can never add a line, or a terminal escape, to what the user sees."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class DocreaderError(Exception):
    """A problem with the user's input or environment, phrased for the user (always one line)."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        super().__init__(one_line(f"{path}: {message}" if path else message))


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first non-empty line (library errors can span many)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
