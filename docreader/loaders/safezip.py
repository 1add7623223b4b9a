"""Reading members of an untrusted zip (DOCX, EPUB) with a hard cap on bytes decompressed.

Declared sizes and compression ratios are checked first, and the actual decompressed byte count is
capped while reading, since a crafted archive can lie in its headers.
"""

from __future__ import annotations

import io
import zipfile
import zlib

from docreader.errors import DocreaderError
from docreader.loaders.limits import human_size

MAX_MEMBERS = 20_000
MAX_RATIO = 100  # deflate of ordinary XML stays far below this; zip bombs are near 1000:1
RATIO_MIN_SIZE = 1_000_000  # small members may compress absurdly well and still be harmless
_CHUNK = 1 << 16


class SafeZip:
    """A zip archive held in memory whose members are read under one shared byte budget."""

    def __init__(self, data: bytes, path: str, what: str, budget: int) -> None:
        self.path, self.what, self.budget = path, what, budget
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
            raise self.error(f"not a valid zip archive: {e}") from None
        if len(infos) > MAX_MEMBERS:
            raise self.error(f"{len(infos)} entries, over the {MAX_MEMBERS} limit")
        self._infos = {i.filename: i for i in infos}
        self._lower = {name.lower(): name for name in self._infos}

    def error(self, reason: str) -> DocreaderError:
        return DocreaderError(f"corrupt {self.what} ({reason})", path=self.path)

    def bomb(self, reason: str) -> DocreaderError:
        return DocreaderError(f"{self.what} looks like a zip bomb ({reason})", path=self.path)

    @property
    def names(self) -> list[str]:
        return list(self._infos)

    def find(self, name: str) -> str | None:
        """The member's stored name, matching case-insensitively (some tools change case)."""
        name = name.lstrip("/")
        return name if name in self._infos else self._lower.get(name.lower())

    def read(self, name: str) -> bytes | None:
        """The member's bytes, or None if there is no such member."""
        stored = self.find(name)
        if stored is None:
            return None
        info = self._infos[stored]
        if info.flag_bits & 0x1:
            raise DocreaderError(f"encrypted {self.what} (password-protected zip) — not supported", path=self.path)
        if info.file_size > self.budget:
            raise self.bomb(f"{stored} expands to {human_size(info.file_size)}, over the "
                            f"{human_size(self.budget, limit=True)} limit")
        if info.file_size > RATIO_MIN_SIZE and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            ratio = info.file_size // max(info.compress_size, 1)
            raise self.bomb(f"{stored} compressed {ratio}:1")
        out = bytearray()
        try:
            with self._zip.open(info) as f:
                while chunk := f.read(_CHUNK):
                    out += chunk
                    if len(out) > self.budget:
                        raise self.bomb(f"{stored} expands past the {human_size(self.budget, limit=True)} limit")
        except DocreaderError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
            raise self.error(f"cannot read {stored}: {e}") from None
        except NotImplementedError as e:
            raise self.error(f"{stored} uses an unsupported compression method: {e}") from None
        except RuntimeError as e:
            raise self.error(f"cannot read {stored}: {e}") from None
        self.budget -= len(out)
        return bytes(out)
