"""Prompt templates for `ask`/`chat -t NAME`: a system prompt, and optionally a default question.

Shipped ones live in `docreader/prompts/templates/` (package data); your own go in
`$DOCREADER_HOME/templates/NAME.txt` and win over a shipped one of the same name. `default` is the built-in
system prompt (`prompts/system.txt`). A template file is a few `key: value` lines (`description`, `question`),
a line `---`, then the system prompt; a file without `---` is all system prompt.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import DocreaderError
from .home import home
from .prompt import PROMPTS

SHIPPED = PROMPTS / "templates"
DEFAULT = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a file name, never a path
_KEYS = ("description", "question")


@dataclass
class Template:
    name: str
    system: str  # replaces the built-in system prompt
    description: str = ""
    question: str | None = None  # asked when the command line gives no question
    path: str = ""
    source: str = "shipped"  # "shipped" | "user"

    def to_json(self) -> dict:
        return asdict(self)


def user_dir() -> Path:
    return home() / "templates"


def parse(name: str, text: str, path: str = "", source: str = "shipped") -> Template:
    """A template from its file's text; a header line that is not `key: value` of a known key is an error
    (a misspelt `questoin:` would otherwise end up inside the system prompt)."""
    if text.startswith("---\n"):
        head, body = "", text[4:]
    elif "\n---\n" in text:
        head, _, body = text.partition("\n---\n")
    else:
        head, body = "", text
    fields: dict[str, str] = {}
    for line in head.splitlines():
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon or key.strip() not in _KEYS:
            raise DocreaderError(f"template {name}: header line {line.strip()!r} is not one of "
                                 f"{', '.join(k + ': …' for k in _KEYS)}", path=path or None)
        fields[key.strip()] = value.strip()
    system = body.strip()
    if not system:
        raise DocreaderError(f"template {name} has no system prompt (after its `---` line)", path=path or None)
    description = fields.get("description") or system.splitlines()[0][:80]
    return Template(name, system, description, fields.get("question") or None, path, source)


def _default() -> Template:
    path = PROMPTS / "system.txt"
    return Template(DEFAULT, path.read_text(encoding="utf-8").strip(),
                    "Quote the passage the answer rests on, then answer (the built-in system prompt).",
                    None, str(path), "shipped")


def _files() -> dict[str, tuple[Path, str]]:
    """name -> (file, source); user templates shadow shipped ones."""
    found: dict[str, tuple[Path, str]] = {}
    for folder, source in ((SHIPPED, "shipped"), (user_dir(), "user")):
        if folder.is_dir():
            for f in sorted(folder.glob("*.txt")):
                if _NAME.match(f.stem):
                    found[f.stem] = (f, source)
    return found


def _read(name: str, path: Path, source: str) -> Template:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DocreaderError(f"cannot read template {name}: {getattr(e, 'strerror', None) or e}",
                             path=str(path)) from None
    return parse(name, text, str(path), source)


def load(name: str) -> Template:
    """The template called `name`; an unknown name is an error that lists the known ones."""
    files = _files()
    if name in files:
        return _read(name, *files[name])
    if name == DEFAULT:
        return _default()
    known = ", ".join(sorted({DEFAULT, *files}))
    raise DocreaderError(f"no template {name!r} (known: {known}; see `docreader templates`)")


def all_templates() -> list[Template]:
    """Every template, by name (`default` included unless a user file replaces it)."""
    files = _files()
    out = [] if DEFAULT in files else [_default()]
    out += [_read(n, *files[n]) for n in files]
    return sorted(out, key=lambda t: t.name)
