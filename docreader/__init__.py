"""docreader: ask questions about a whole long document with a local sparse-attention LLM.

Nothing is imported here (the CLI's start-up time stays what each command needs); `__version__` is the
package version (pyproject.toml reads it from here)."""

__version__ = "0.1.0"
