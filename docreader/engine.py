"""The one path every front end uses: document -> prompt -> DSA generation -> provenance -> log.

The CLI, the chat loop and the LangChain integration all call `Reader.ask`, so what they log and cite
is the same thing.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dsa
from dsa.longctx import set_context

from . import models, store
from .document import Document
from .errors import DocreaderError
from .generate import generate
