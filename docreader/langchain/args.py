"""Constructor and call arguments checked by name: pydantic (and LangChain's base classes) ignore unknown
ones, so `ChatDocreader(max_new_tokens=4)` used to run with the default 256 tokens and say nothing.

Unknown names raise a TypeError, as a Python function would, naming the closest real one. The standard
parameters LangChain passes to every chat model (`api_key`, `timeout`, `max_retries`: `init_chat_model`,
the langchain-tests suite) are accepted with a warning instead: code written for a hosted model keeps
working, and the warning says they do nothing to a local one.
"""

from __future__ import annotations

import difflib
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

REMOTE_ONLY = ("api_key", "timeout", "max_retries")  # standard chat-model params with no meaning locally


def _user_stacklevel() -> int:
    """The stacklevel of the first frame outside pydantic, langchain-core and this package: the caller who
    wrote the argument (the depth of the base classes' __init__ chains differs between models and tools)."""
    inner = tuple(str(Path(m.__file__).parent) for m in (sys.modules["pydantic"], sys.modules["langchain_core"]))
    inner += (str(Path(__file__).parent),)
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(inner):
        frame, level = frame.f_back, level + 1
    return level


def unknown_message(owner: str, names: Iterable[str], known: Iterable[str]) -> str:
    """`ChatDocreader() got an unexpected keyword argument 'max_new_tokens' (did you mean 'max_tokens'?)`."""
    names, known = sorted(names), sorted(known)
    hints = [f"'{m[0]}'" for n in names if (m := difflib.get_close_matches(n, known, n=1, cutoff=0.6))]
    plural = "s" if len(names) > 1 else ""
    hint = f" (did you mean {', '.join(dict.fromkeys(hints))}?)" if hints else ""
    return f"{owner} got unexpected keyword argument{plural} {', '.join(repr(n) for n in names)}{hint}"


def field_names(cls) -> set[str]:
    """A pydantic model's field names and their aliases."""
    return {n for name, f in cls.model_fields.items() for n in (name, f.alias) if n}


def checked_init(cls, values, remote_only: Iterable[str] = REMOTE_ONLY):
    """For a `model_validator(mode="before")`: `values` less the remote-only params (with a warning); a
    TypeError for any other name that is not a field (pydantic passes a TypeError through unwrapped)."""
    if not isinstance(values, dict):
        return values
    known = field_names(cls)
    ignored = [k for k in values if k in remote_only and k not in known]
    unknown = [k for k in values if k not in known and k not in ignored]
    if unknown:
        raise TypeError(unknown_message(f"{cls.__name__}()", unknown, known))
    if ignored:
        warnings.warn(f"{cls.__name__} ignores {', '.join(ignored)}: it runs a local model, with no API key, "
                      "requests, timeouts or retries", UserWarning, stacklevel=_user_stacklevel())
    return {k: v for k, v in values.items() if k not in ignored}


def check_call(owner: str, kwargs: dict, allowed: Iterable[str]) -> None:
    """A TypeError for call kwargs (`invoke(..., max_new_tokens=4)`) the model would otherwise drop."""
    allowed = set(allowed)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise TypeError(unknown_message(owner, unknown, allowed))
