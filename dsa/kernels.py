"""The CPU kernel for DSA's sparse path (`csrc/select_attend.cpp`): built with g++ at first use, loaded by ctypes.

Why a kernel: a CPU decode step through PyTorch ops is bound by per-op overhead (about 60 small ops per
sparse layer), and a prefill chunk attends the union of its queries' selections. The kernel runs both
stages and the attention per query, reading only that query's keys (K/V buffers in fp32, or in bf16
converted as each row is loaded: half the memory of a long cache, the arithmetic stays fp32). No torch
headers, so it builds in about a second; the shared object is cached under `$DSA_KERNEL_DIR` (default
`~/.cache/dsa/kernels`), keyed by the source, the flags and the CPU.

It is built for the CPU it runs on (-march=native on x86, -mcpu=native elsewhere, then portable flags if
those fail), so its vector paths are AVX-512 or AVX2 as the CPU has them, scalar loops otherwise; `isa()`
says which. `DSA_KERNEL_ISA=avx2` builds the AVX2 paths on an AVX-512 CPU and `scalar` none (to measure
them). If g++ is missing or every build fails, `available()` is False and DSA uses its PyTorch path (same
selections, slower: `dsa.attention` warns once). `DSA_KERNELS=0` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

SRC = Path(__file__).with_name("csrc") / "select_attend.cpp"
BASE = ["-O3", "-ffast-math", "-std=c++17", "-shared", "-fPIC", "-pthread"]
ISA_FLAGS = {"native": [], "avx2": ["-mno-avx512f"], "scalar": ["-mno-avx", "-mno-fma"]}
_lib: ctypes.CDLL | None | bool = False  # False: not tried yet
_error = ""
_openmp = False  # built with OpenMP: decode steps split over threads
_flags: list[str] = []  # the flags of the loaded build
STAT_NAMES = ("tiles_dense", "tiles_sparse", "decoded", "threads")  # the kernel's path counts, in its order

_i64, _f32, _int = ctypes.c_int64, ctypes.c_float, ctypes.c_int
_ptr = ctypes.c_void_p


def _cpu_id() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
    return "\n".join(keep)


def _compile(flags: list[str]) -> Path:
    src = b"".join(f.read_bytes() for f in sorted(SRC.parent.iterdir()) if f.suffix in (".cpp", ".h"))
    key = hashlib.sha256(src + " ".join(flags).encode() + _cpu_id().encode()).hexdigest()[:16]
    root = Path(os.environ.get("DSA_KERNEL_DIR") or Path.home() / ".cache" / "dsa" / "kernels")
    so = root / f"select_attend-{key}.so"
    if not so.exists():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:  # build aside, then rename: never a half-written .so
            out = Path(tmp) / so.name
            r = subprocess.run(["g++", *flags, str(SRC), "-o", str(out)], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(r.stderr.strip()[-500:])
            os.replace(out, so)
    return so


def on_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def flag_sets() -> list[list[str]]:
    """Compiler flags to try in order: tuned for this CPU first, then portable. -mprefer-vector-width and the
    ISA switches exist on x86 only; aarch64 g++ takes -mcpu=native."""
    isa = os.environ.get("DSA_KERNEL_ISA", "native")
    if isa not in ISA_FLAGS:
        raise RuntimeError(f"DSA_KERNEL_ISA must be one of {', '.join(ISA_FLAGS)}, got {isa!r}")
    if on_x86():
        return [BASE + ["-march=native", "-mprefer-vector-width=512", *ISA_FLAGS[isa]], BASE]
    return [BASE + ["-mcpu=native"], BASE + ["-march=native"], BASE]


def _build() -> ctypes.CDLL:
    # With OpenMP the kernel splits a decode step's single query over PyTorch's own OpenMP threads (the .so
    # binds to the libgomp.so.1 torch has loaded); without it, decode runs on one thread. A libgomp older than
    # the compiler's would fail to load: then the build without OpenMP; a flag the compiler rejects: the next set.
    global _openmp, _flags
    errors = []
    for flags in flag_sets():
        for omp in (True, False):
            fl = flags + (["-fopenmp"] if omp else [])
            try:
                lib = ctypes.CDLL(str(_compile(fl)))
            except (RuntimeError, OSError) as e:
                errors.append(str(e).splitlines()[-1] if str(e) else type(e).__name__)
                continue
            _openmp, _flags = omp, fl
            fn = lib.dsa_select_attend
            fn.restype = _int
            fn.argtypes = [_i64, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _ptr,
                           _int, _int, _int, _int, _int, _int, _int, _int, _int, _int, _f32, _int, _int]
            lib.dsa_attend_all.restype = _int
            lib.dsa_attend_all.argtypes = [_ptr, _ptr, _ptr, _i64, _i64, _ptr, _int, _int, _int, _f32, _int, _int]
            lib.dsa_kernel_isa.restype = ctypes.c_char_p
            return lib
    raise RuntimeError("; ".join(dict.fromkeys(errors)))


def available() -> bool:
    """True when the kernel is built and loaded (tries once per process)."""
    global _lib, _error
    if os.environ.get("DSA_KERNELS", "1") == "0":
        return False
    if _lib is False:
        try:
            _lib = _build()
        except FileNotFoundError:
            _lib, _error = None, "g++ not found"
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _lib, _error = None, f"{type(e).__name__}: {e}"
    return _lib is not None


def openmp() -> bool:
    """True when the loaded kernel was built with OpenMP (a decode step's query is split over threads)."""
    return available() and _openmp


def isa() -> str:
    """The loaded build's vector paths: "avx512", "avx2" or "scalar" ("" when the kernel is unavailable)."""
    return _lib.dsa_kernel_isa().decode() if available() else ""


def describe() -> str:
    """What runs DSA's CPU sparse path, for logs: e.g. "kernel/avx2+openmp" or "torch (g++ not found)"."""
    if available():
        return f"kernel/{isa()}" + ("+openmp" if _openmp else "")
    return f"torch ({build_error() or 'DSA_KERNELS=0'})"


def build_error() -> str:
    """Why the kernel is unavailable ('' when it is available or was not tried)."""
    return _error


KV_DTYPES = (torch.float32, torch.bfloat16)  # what the kernel reads K/V buffers in (bf16 rows converted as loaded)


def usable(*tensors: torch.Tensor) -> bool:
    """The kernel takes float32 CPU tensors (and K/V buffers in one of KV_DTYPES)."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and available()


def select_attend(qi: torch.Tensor, wi: torch.Tensor, keys: torch.Tensor, means: torch.Tensor, qpos: torch.Tensor,
                  query: torch.Tensor, kbuf: torch.Tensor, vbuf: torch.Tensor, cfg, scaling: float,
                  out: torch.Tensor, threads: int | None = None, stats: dict | None = None
                  ) -> tuple[torch.Tensor, tuple[float, float]]:
    """Both stages and the attention for C queries of one batch row; writes `out` [C, H, D] and returns the
    number of keys each query read [C] and the (selection, attention) seconds summed over threads. `stats`, when
    given, gains the paths taken: tiles_dense / tiles_sparse (prefill tiles through dense products or row by
    row), decoded (queries attended alone) and threads (the most the runtime granted).
    threads (default torch's): many queries go one per thread; fewer than 8 split each query's work.

    qi [C, H_I, d_I], wi [C, H_I], keys [L, d_I] (rows contiguous), means [nb, d_I], qpos [C] long,
    query [C, H, D], kbuf / vbuf [Hkv, cap, D] (positions < L filled; float32 or both bfloat16), out [C, H, D]
    contiguous."""
    if not available():
        raise RuntimeError(f"dsa kernel unavailable: {build_error() or 'DSA_KERNELS=0'}")
    C, HI, DI = qi.shape
    H, D = query.shape[1:]
    Hkv = kbuf.shape[0]
    qi, wi, means, qpos, query = (t.contiguous() for t in (qi, wi.float(), means.float(), qpos, query))
    if keys.stride(1) != 1 or keys.stride(0) != DI:
        keys = keys.contiguous()
    if not (kbuf.is_contiguous() and vbuf.is_contiguous() and out.is_contiguous()):
        raise ValueError("select_attend: kbuf, vbuf and out must be contiguous")
    if kbuf.dtype != vbuf.dtype or kbuf.dtype not in KV_DTYPES:
        raise ValueError(f"select_attend: kbuf and vbuf must both be float32 or bfloat16, got {kbuf.dtype}, {vbuf.dtype}")
    nread = torch.empty(C, dtype=torch.int64)
    phase = (ctypes.c_double * 2)()
    counts = (ctypes.c_int64 * 4)()
    _lib.dsa_select_attend(C, qi.data_ptr(), wi.data_ptr(), keys.data_ptr(), means.data_ptr(), means.shape[0],
                           qpos.data_ptr(), query.data_ptr(), kbuf.data_ptr(), vbuf.data_ptr(), kbuf.shape[1],
                           out.data_ptr(), nread.data_ptr(), phase, counts, HI, DI, H, Hkv, D, cfg.block_size, cfg.n_blocks,
                           cfg.top_k, cfg.sink_tokens, cfg.local_window, float(scaling), threads or torch.get_num_threads(),
                           int(kbuf.dtype == torch.bfloat16))
    if stats is not None:
        for i, name in enumerate(STAT_NAMES[:3]):
            stats[name] = stats.get(name, 0) + counts[i]
        stats["threads"] = max(stats.get("threads", 0), counts[3])
    return nread, (phase[0], phase[1])


def attend_all(query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float,
               threads: int | None = None) -> torch.Tensor | None:
    """A dense layer's decode step on the CPU: query [H, D] over every key of k / v [Hkv, L, D] -> [H, D], or None
    when the kernel cannot take them. k / v may be the first L rows of a longer buffer [Hkv, cap, D] (a cache's
    view): rows contiguous, float32 or both bfloat16. The same arithmetic as a sparse decode step's attention."""
    if not (usable(query) and not query.requires_grad and k.dtype == v.dtype and k.dtype in KV_DTYPES and k.shape == v.shape and k.stride() == v.stride()
            and k.stride(2) == 1 and k.stride(1) == k.shape[2] and k.stride(0) >= k.shape[1] * k.shape[2]):
        return None
    Hkv, L, D = k.shape
    H = query.shape[0]
    if H % Hkv or k.stride(0) % D:
        return None
    query = query.contiguous()
    out = torch.empty(H, D)
    _lib.dsa_attend_all(query.data_ptr(), k.data_ptr(), v.data_ptr(), k.stride(0) // D, L, out.data_ptr(), H, Hkv, D,
                        float(scaling), threads or torch.get_num_threads(), int(k.dtype == torch.bfloat16))
    return out
