"""One exception type for everything a user can get wrong.

The CLI turns a `DocreaderError` into a single line on stderr and a non-zero exit, never a traceback.
"""


class DocreaderError(Exception):
    """A problem with the user's input or environment, phrased for the user."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first non-empty line (library errors can span many)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
