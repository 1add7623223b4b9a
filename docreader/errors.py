"""One exception type for everything a user can get wrong.

The CLI turns a `DocreaderError` into a single line on stderr and a non-zero exit, never a traceback.
"""


class DocreaderError(Exception):
    """A problem with the user's input or environment, phrased for the user."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)
