"""The document cache on disk (docreader.doccache): an entry restores the prefix exactly, and every bad case
(truncated or corrupt file, another key, an unwritable or full cache dir, two writers at once, the size
limit) costs at most a note and a re-read, never a wrong answer or a lost one."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest
import torch

from docreader import doccache
from dsa.cache import DSACache

LAYERS, TOKENS = 3, 40


def filled(seed: int = 0, tokens: int = TOKENS, dtype=None) -> DSACache:
    """A cache as a 3-layer DSA model leaves it: layer 0 dense (model dtype), 1-2 sparse with indexer keys."""
    g = torch.Generator().manual_seed(seed)
    cache = empty(dtype)
    with torch.inference_mode():
        for i, layer in enumerate(cache.layers):
            layer.update(torch.randn(1, 2, tokens, 8, generator=g), torch.randn(1, 2, tokens, 8, generator=g))
            if i:
                cache.index_keys[i].append(torch.randn(1, tokens, 4, generator=g))
    return cache


def empty(dtype=None) -> DSACache:
    return DSACache(LAYERS, block_size=16, capacity=64, kv_dtype=dtype, full_layers=[0])


def same(a: DSACache, b: DSACache) -> bool:
    return all(torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values) for x, y in zip(a.layers, b.layers)) \
        and all(torch.equal(x.keys.view, y.keys.view) and torch.allclose(x.block_means(), y.block_means())
                for x, y in zip(a.index_keys[1:], b.index_keys[1:]))


@pytest.fixture
def notes(home, monkeypatch) -> list[str]:
    got: list[str] = []
    monkeypatch.setattr(doccache, "note", got.append)
    return got


KEY = doccache.make_key({"model": "m", "dsa": {"top_k": 8}}, list(range(TOKENS)))


def test_entry_restores_the_cache_exactly(notes):
    for dtype in (None, torch.bfloat16):
        src = filled(dtype=dtype)
        path = doccache.save(*KEY, src, TOKENS, {"document": "a.txt", "model": "m"})
        got = doccache.load(*KEY, TOKENS, lambda: empty(dtype))
        assert path.exists() and got is not None and same(src, got) and got.get_seq_length() == TOKENS
        assert got.layers[1].keys.dtype == (dtype or torch.float32) and got.layers[0].keys.dtype == torch.float32
    assert notes == []
    [e] = doccache.entries()
    assert (e.tokens, e.document, e.model) == (TOKENS, "a.txt", "m")
    from safetensors.torch import load_file  # the file is plain safetensors: other tools can read it
    assert torch.equal(load_file(str(e.path))["k.2"], src.layers[2].keys)


def test_only_the_prefix_is_stored(notes):
    src = filled(tokens=TOKENS + 7)  # the prompt's question and answer after the document
    doccache.save(*KEY, src, TOKENS, {})
    got = doccache.load(*KEY, TOKENS, empty)
    assert got.get_seq_length() == TOKENS
    assert torch.equal(got.layers[2].keys, src.layers[2].keys[..., :TOKENS, :])


def test_key_covers_config_and_prompt():
    base = doccache.make_key({"model": "m", "dsa": {"top_k": 8}}, [1, 2, 3])
    assert doccache.make_key({"model": "m", "dsa": {"top_k": 8}}, [1, 2, 3]) == base
    assert doccache.make_key({"model": "m", "dsa": {"top_k": 9}}, [1, 2, 3])[0] != base[0]
    assert doccache.make_key({"model": "m2", "dsa": {"top_k": 8}}, [1, 2, 3])[0] != base[0]
    assert doccache.make_key({"model": "m", "dsa": {"top_k": 8}}, [1, 2, 4])[0] != base[0]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other key", "other dtype"])
def test_a_bad_entry_is_discarded_with_one_note(notes, damage):
    path = doccache.save(*KEY, filled(), TOKENS, {})
    make = empty
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "other key":  # a file of another model or config under this entry's name
        other = doccache.make_key({"model": "other"}, list(range(TOKENS)))
        doccache.save(*other, filled(), TOKENS, {})
        os.replace(doccache.cache_dir() / f"{other[0]}{doccache.SUFFIX}", path)
    else:  # the live cache would store bf16: the fp32 entry does not fit it
        make = lambda: empty(torch.bfloat16)  # noqa: E731
    assert doccache.load(*KEY, TOKENS, make) is None
    assert len(notes) == 1 and "discarded" in notes[0] and not path.exists()
    assert doccache.load(*KEY, TOKENS, make) is None and len(notes) == 1  # gone: a plain miss now


def test_unwritable_or_full_cache_dir_costs_a_note(notes, home, monkeypatch):
    (home / "cache").write_text("not a directory")  # mkdir fails as on a read-only or foreign path
    assert doccache.save(*KEY, filled(), TOKENS, {}) is None
    assert len(notes) == 1 and "could not be written" in notes[0]
    (home / "cache").unlink()

    def full(path, tensors, meta):
        with open(path, "wb") as f:
            f.write(b"\0" * 100)  # part of it written, then the disk is full
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(doccache, "_write", full)
    assert doccache.save(*KEY, filled(), TOKENS, {}) is None
    assert "No space left" in notes[-1]
    assert list((home / "cache").iterdir()) == []  # no half-written entry, no temporary file


def test_a_reader_never_sees_a_half_written_entry(notes, monkeypatch):
    """While a new entry is being written, a reader of the same entry still finds the old one whole."""
    write = doccache._write
    doccache.save(*KEY, filled(1), TOKENS, {})
    seen = []

    def slow(path, tensors, meta):
        write(path, tensors, meta)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)  # the writer is half way …
        seen.append(doccache.load(*KEY, TOKENS, empty))  # … when another process reads
        write(path, tensors, meta)
    monkeypatch.setattr(doccache, "_write", slow)
    doccache.save(*KEY, filled(2), TOKENS, {})
    assert seen[0] is not None and same(seen[0], filled(1)) and notes == []
    assert same(doccache.load(*KEY, TOKENS, empty), filled(2))


def _writer(home: str, seed: int, n: int) -> None:
    os.environ["DOCREADER_HOME"] = home
    for _ in range(n):
        doccache.save(*KEY, filled(seed), TOKENS, {})


def test_two_processes_writing_one_entry_leave_a_whole_one(notes, home):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(home), seed, 15)) for seed in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    got = doccache.load(*KEY, TOKENS, empty)
    assert got is not None and (same(got, filled(1)) or same(got, filled(2)))
    assert notes == [] and [p.name for p in (home / "cache").iterdir()] == [f"{KEY[0]}{doccache.SUFFIX}"]


def test_least_recently_used_entries_go_past_the_limit(notes, monkeypatch):
    keys = [doccache.make_key({"n": i}, [i]) for i in range(3)]
    one = doccache.save(*keys[0], filled(), TOKENS, {}).stat().st_size
    monkeypatch.setenv(doccache.SIZE_ENV, str(2.5 * one / 2**20))  # room for two entries
    doccache.save(*keys[1], filled(), TOKENS, {})
    os.utime(doccache.cache_dir() / f"{keys[0][0]}{doccache.SUFFIX}", (1, 1))  # entry 0 written first …
    os.utime(doccache.cache_dir() / f"{keys[1][0]}{doccache.SUFFIX}", (2, 2))
    assert doccache.load(*keys[0], TOKENS, empty) is not None  # … but used just now: entry 1 is the oldest use
    doccache.save(*keys[2], filled(), TOKENS, {})
    left = {e.path.name for e in doccache.entries()}
    assert left == {f"{keys[0][0]}{doccache.SUFFIX}", f"{keys[2][0]}{doccache.SUFFIX}"}
    monkeypatch.setenv(doccache.SIZE_ENV, "0")  # an entry alone over the limit is not kept either
    doccache.save(*keys[1], filled(), TOKENS, {})
    assert doccache.entries() == [] and notes == []
    monkeypatch.setenv(doccache.SIZE_ENV, "lots")
    with pytest.raises(Exception, match="DOCREADER_CACHE_MB must be a number"):
        doccache.limit_bytes()


# -- with the real default model ----------------------------------------------------------------------------

KNOBS = {"top_k": 96, "n_blocks": 4, "local_window": 32}  # the ~525-token document is really selected from


@pytest.mark.integration
def test_a_new_reader_starts_from_the_cache_and_answers_as_without_it(model_home, irc_file, notes):
    from docreader.engine import Reader
    from docreader.loaders import load
    doc = load(str(irc_file))
    q1, q2 = "Who buys music off iTunes?", "What link did monchichi post?"
    first = Reader(None, KNOBS).ask(doc, q1, max_new_tokens=6, log=False)
    assert first.timings["prefix_cache"] == "none" and first.timings["cache_save_s"] > 0
    [entry] = doccache.entries()
    doc_end = Reader(None, KNOBS).prompt(doc, q2).doc_end
    assert entry.tokens == doc_end and entry.document == str(irc_file)

    cached = Reader(None, KNOBS).ask(doc, q2, max_new_tokens=8, log=False)  # a new process, in effect
    plain = Reader(None, KNOBS, disk_cache=False).ask(doc, q2, max_new_tokens=8, log=False)
    assert cached.timings["prefix_cache"] == "disk" and cached.timings["cached_prefix_tokens"] == doc_end
    assert plain.timings["prefix_cache"] == "none" and plain.timings["cached_prefix_tokens"] == 0
    assert cached.text == plain.text and cached.new_tokens == plain.new_tokens
    assert [(s.char_start, s.char_end) for s in cached.spans] == [(s.char_start, s.char_end) for s in plain.spans]
    assert [s.score for s in cached.spans] == pytest.approx([s.score for s in plain.spans], rel=1e-4, abs=1e-6)

    other = Reader(None, {**KNOBS, "top_k": 80}).ask(doc, q2, max_new_tokens=2, log=False)
    assert other.timings["prefix_cache"] == "none" and len(doccache.entries()) == 2  # another config, another entry

    with open(entry.path, "r+b") as f:  # a truncated entry: discarded, read again, the same answer
        f.truncate(entry.bytes // 3)
    again = Reader(None, KNOBS).ask(doc, q2, max_new_tokens=8, log=False)
    assert again.timings["prefix_cache"] == "none" and again.text == plain.text
    assert len(notes) == 1 and "discarded" in notes[0]
    assert Reader(None, KNOBS).ask(doc, q2, max_new_tokens=1, log=False).timings["prefix_cache"] == "disk"  # rewritten
