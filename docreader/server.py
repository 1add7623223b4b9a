"""`docreader serve`: keep torch, transformers and the default model loaded, so a later `ask` or `chat` in
another terminal starts answering in about a second instead of seven.

Why: a new process spends ~4 s importing torch and transformers' Llama modelling and ~1 s loading the model
before a cached document's question can even start (bench/RESULTS-cache.md); no import trimming brings that
under 3 s. The server does that work once, then serves each command by fork: the child is the process the
command would have been (its argv, working directory, environment and the client's own stdin/stdout/stderr,
passed over a Unix socket), minus the start-up. It runs the same CLI code on the same loaded model, so the
output is the one a fresh process prints (tests/test_server.py), and the client exits with its exit code.

The client (`forward`, called by the `docreader` entry point for ask/chat) uses a server only when one is
listening on $DOCREADER_HOME/serve.sock, runs the same code (same files, same Python, same sys.path) and the
same docreader/torch/HF environment variables; otherwise it says why on stderr (when a server was there) and
the command runs in its own process as before. DOCREADER_SERVE=off never uses one. Ctrl-C in the client
reaches the child; a client that dies takes its child with it.

Keep-alive (`keep_alive_wanted`, `start_in_background`): an `ask` or `chat` that a person ran at a terminal, with
no server to take it, starts one when it has answered, detached and silent, which stops after
$DOCREADER_KEEP_ALIVE minutes (default 10) without a command — as Ollama keeps a model loaded between
requests; its output goes to $DOCREADER_HOME/serve.log. So the second question in a new process starts in about a
second by default. Pipelines and scripts
(stdout not a terminal) never leave a process behind unless DOCREADER_SERVE=auto asks for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from .home import home

SOCKET_NAME = "serve.sock"
LOG_NAME = "serve.log"  # a keep-alive server's output
SERVED = ("ask", "chat")  # the commands that load a model; the others are fast without a server
ENV_OFF = "DOCREADER_SERVE"  # "off": never forward
_CHILD_ENV = "DOCREADER_SERVED_CHILD"  # set in a served child: it must not forward again
ENV_PREFIXES = ("DOCREADER_", "DSA_", "OMP_", "MKL_", "KMP_", "GOMP_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH",
                "PYTORCH_", "CUDA_", "PYTHON")  # what can change an answer, its speed or the code that runs
DEFAULT_IDLE_S = 1800
ENV_KEEP = "DOCREADER_KEEP_ALIVE"  # minutes a server that `ask`/`chat` started stays up idle (0: never start one)
KEEP_ALIVE_MIN = 10.0
CLI = "import sys; sys.argv[0] = 'docreader'; from docreader.entry import main; main()"  # the console script
_HEADER = struct.Struct("!I")


def socket_path() -> Path:
    return home() / SOCKET_NAME


def code_stamp() -> str:
    """Which code and model a process would run: this Python, its sys.path and when its site-packages last
    changed (a package installed or upgraded), every file of docreader and dsa (name, size, mtime: shipped
    weights and the C kernel included) and the default model's files. Cheap (stats, no reads, no torch): the
    client computes it on every command."""
    import importlib.util
    from .models import default_model_dir, weights_fingerprint
    h = hashlib.sha256(json.dumps([sys.executable, [os.path.abspath(p) for p in sys.path]]).encode())
    for entry in sys.path:  # a package installed, upgraded or removed changes its directory's mtime
        if os.path.basename(entry) not in ("site-packages", "dist-packages"):
            continue  # a working directory changes whenever a file is written there
        try:
            h.update(f"{entry}:{os.stat(entry).st_mtime_ns}\n".encode())
        except OSError:
            pass
    roots = [Path(__file__).resolve().parent]
    spec = importlib.util.find_spec("dsa")
    if spec is not None and spec.origin:
        roots.append(Path(spec.origin).resolve().parent)
    for root in roots:
        for dirpath, dirnames, files in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(files):
                st = os.stat(os.path.join(dirpath, name))
                h.update(f"{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    model_dir = default_model_dir()
    h.update(json.dumps(weights_fingerprint(model_dir) if model_dir.is_dir() else None).encode())
    return h.hexdigest()


def relevant_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIXES) and k not in (_CHILD_ENV, ENV_OFF, ENV_KEEP)}


def _send(sock: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    msg = _HEADER.pack(len(data)) + data
    if fds:
        socket.send_fds(sock, [msg], fds)
    else:
        sock.sendall(msg)


def _recv_exact(sock: socket.socket, n: int, fds: list[int] | None = None) -> bytes:
    buf = b""
    while len(buf) < n:
        if fds is not None and not buf:
            chunk, got, _, _ = socket.recv_fds(sock, n, 3)
            fds.extend(got)
        else:
            chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def _recv(sock: socket.socket, fds: list[int] | None = None) -> dict:
    """One message; with `fds`, file descriptors sent along with its first bytes are appended to it."""
    head = _recv_exact(sock, _HEADER.size, fds)
    (n,) = _HEADER.unpack(head)
    return json.loads(_recv_exact(sock, n))


# -- the client ---------------------------------------------------------------------------------------------

def forward(argv: list[str]) -> int | None:
    """Run `docreader ARGV` in a server's child when one can take it -> its exit code; None: run it here."""
    if not argv or argv[0] not in SERVED or _serve_off() or os.environ.get(_CHILD_ENV):
        return None
    path = socket_path()
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2.0)
        sock.connect(str(path))
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "stamp": code_stamp(),
                   "encodings": [[s.encoding, s.errors] if s is not None and hasattr(s, "encoding") else None
                                 for s in (sys.stdin, sys.stdout, sys.stderr)]}
        for s in (sys.stdout, sys.stderr):
            s.flush()
        _send(sock, request, [0, 1, 2])
        sock.settimeout(30.0)  # the server answers in milliseconds unless the machine is swamped
        reply = _recv(sock)
    except (OSError, ConnectionError, ValueError):  # no server (a stale socket file), or it went away
        sock.close()
        return None
    if "declined" in reply:
        sock.close()
        print(f"note: not using `docreader serve` ({reply['declined']}); starting without it", file=sys.stderr)
        return None
    pid = int(reply["pid"])
    forward_signal = lambda signum, frame: _kill(pid, signum)  # noqa: E731 - Ctrl-C reaches the child
    previous = {s: signal.signal(s, forward_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        sock.settimeout(None)
        return int(_recv(sock)["exit"])
    except (OSError, ConnectionError, ValueError, KeyError):
        print("error: `docreader serve` stopped while answering", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()


def keep_alive_wanted(argv: list[str]) -> bool:
    """Whether this command, run here (no server took it), should leave a server behind for the next one."""
    if not argv or argv[0] not in SERVED or os.environ.get(_CHILD_ENV) or _serve_off():
        return False
    try:
        minutes = float(os.environ.get(ENV_KEEP, KEEP_ALIVE_MIN))
    except ValueError:
        return False
    mode = os.environ.get(ENV_OFF, "").lower()
    return minutes > 0 and (mode == "auto" or (mode == "" and sys.stdout.isatty()))


def _serve_off() -> bool:
    return os.environ.get(ENV_OFF, "").lower() in ("off", "0", "no")


def start_in_background(env: dict[str, str]) -> bool:
    """Start `docreader serve` detached (own session, no terminal, no inherited pipes) the way this process was
    started: same interpreter, script or -c, working directory, and `env` — the environment it started with, not
    what loading a model added to it (HF_HUB_OFFLINE...): the server serves only callers with its own code and
    settings. -> whether one was started (not when a server's socket is already there)."""
    import subprocess
    if socket_path().exists():
        return False
    script = sys.argv[0] if os.path.isfile(sys.argv[0]) else None
    cmd = [sys.executable, script] if script else [sys.executable, "-c", CLI]
    minutes = float(os.environ.get(ENV_KEEP, KEEP_ALIVE_MIN))
    with open(home() / LOG_NAME, "a") as log:  # what it served and why it stopped, for whoever wonders
        subprocess.Popen([*cmd, "serve", "--idle", f"{minutes:g}"], cwd=os.getcwd(), env=env,
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         close_fds=True)
    print(f"docreader: the model stays loaded for {minutes:g} min for your next question (`docreader serve "
          f"--stop` stops it; DOCREADER_SERVE=off never starts it)", file=sys.stderr)
    return True


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# -- the server ---------------------------------------------------------------------------------------------

class Server:
    """Listens on socket_path(); each accepted command runs in a forked child (see the module docstring)."""

    def __init__(self, idle_s: float = DEFAULT_IDLE_S, say=print) -> None:
        self.idle_s, self.say = idle_s, say
        self.stamp = code_stamp()
        self.env = relevant_env(dict(os.environ))
        self.children: dict[int, tuple[socket.socket, str, float]] = {}  # pid -> (client, command, start)
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.threads = 1
        # /proc/stat readings (wall, (all, idle) ticks), the older one 0.25-0.5 s old: a child starts its busy-CPU
        # interval from it instead of sleeping 0.2 s for one (cli_setup.default_threads)
        self.samples: list[tuple[float, tuple[int, int]]] = []

    def warm(self) -> float:
        """Import and load what every ask/chat needs, with one torch thread: OpenMP's thread pool must not
        exist before a fork (a child would wait on the parent's threads); each child sets its own count."""
        t0 = time.perf_counter()
        import torch
        self.threads = torch.get_num_threads()  # what a fresh process starts with (OMP_NUM_THREADS or cores)
        torch.set_num_threads(1)
        from . import cli, engine, loaders  # noqa: F401 - imported once here, not in every child
        from .loaders import pdf, docx, epub, html_page, markdown  # noqa: F401
        from dsa import kernels
        kernels.available()  # builds or loads the CPU kernel (no OpenMP thread starts until it runs)
        from .models import _installed, default_model_dir
        if _installed(default_model_dir()):
            engine.get_model(None, {})  # what ask/chat without --model and DSA knobs use
        return time.perf_counter() - t0

    def check_free(self) -> None:
        """Fail at once when a server already listens here; a socket file left by a killed one is removed."""
        path = socket_path()
        if path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink(missing_ok=True)  # left by a server that was killed
            else:
                from .errors import DocreaderError
                raise DocreaderError("a docreader server is already running (stop it with Ctrl-C or "
                                     "`docreader serve --stop`)", path=str(path))
            finally:
                probe.close()

    def listen(self) -> None:
        """Bind only once warm: a client never waits on a server that is still loading (it starts on its own)."""
        path = socket_path()
        tmp = path.with_name(f".{SOCKET_NAME}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is this user's only: whoever connects runs commands as this user
        try:
            self.listener.bind(str(tmp))
        finally:
            os.umask(old)
        self.listener.listen(16)
        os.replace(tmp, path)
        self.sel.register(self.listener, selectors.EVENT_READ)

    def run(self) -> None:
        """Serve until idle for idle_s with no command running, or SIGTERM/SIGINT (or --stop)."""
        stop = []
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, lambda signum, frame: stop.append(signum))
        last = time.monotonic()
        try:
            while not stop:
                for key, _ in self.sel.select(timeout=0.05):  # also how soon an exit is reported
                    if key.fileobj is self.listener:
                        self._accept()
                    else:  # a client connection readable while its child runs: the client went away
                        pid = key.data
                        _kill(pid, signal.SIGTERM)
                        self.sel.unregister(key.fileobj)
                self._reap()
                self._sample_cpus()
                if self.children:
                    last = time.monotonic()
                elif time.monotonic() - last > self.idle_s:
                    self.say(f"docreader serve: idle for {self.idle_s:.0f} s, stopping")
                    break
        finally:
            self.close()

    def _sample_cpus(self) -> None:
        now = time.monotonic()
        if not self.samples or now - self.samples[-1][0] >= 0.25:
            from .cli_setup import cpu_reading
            try:
                self.samples = [*self.samples[-1:], (now, cpu_reading())]
            except (OSError, ValueError, IndexError):
                self.samples = []

    def close(self) -> None:
        for pid in list(self.children):
            _kill(pid, signal.SIGTERM)
        self._reap()
        if self.listener is not None:
            socket_path().unlink(missing_ok=True)  # ours: check_free refused to start next to a live one
            self.listener.close()
            self.listener = None

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.children:
                continue
            conn, command, started = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it
            self.say(f"docreader serve: {command} (pid {pid}) exited {code} after {time.monotonic() - started:.1f} s")
            sys.stdout.flush()
            try:
                self.sel.unregister(conn)
            except (KeyError, ValueError):
                pass
            try:
                _send(conn, {"exit": code})
            except OSError:
                pass
            conn.close()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        fds: list[int] = []
        try:
            conn.settimeout(5.0)
            uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            request = _recv(conn, fds)
            reason = self._refuse(request, uid, fds)
            if reason:
                _send(conn, {"declined": reason})
                conn.close()
                return
            pid = os.fork()
            if pid == 0:  # the child: never returns
                self._child(request, fds)
            _send(conn, {"pid": pid})
            conn.settimeout(None)
            self.children[pid] = (conn, request["argv"][0], time.monotonic())
            self.sel.register(conn, selectors.EVENT_READ, pid)
        except (OSError, ConnectionError, ValueError) as e:
            conn.close()
            self.say(f"docreader serve: a request failed ({e})")
        finally:
            for fd in fds:
                os.close(fd)

    def _refuse(self, request: dict, uid: int, fds: list[int]) -> str | None:
        if uid != os.getuid():
            return "another user's server"
        if len(fds) != 3:
            return "the client's stdin/stdout/stderr did not arrive"
        if not request.get("argv") or request["argv"][0] not in SERVED:
            return f"it serves only {', '.join(SERVED)}"
        if request.get("stamp") != self.stamp:
            return ("it runs other code: docreader, dsa, the default model or the Python environment changed "
                    "since it started, or this is another checkout; restart it")
        env = relevant_env(request.get("env", {}))
        if env != self.env:
            diff = sorted(k for k in set(env) | set(self.env) if env.get(k) != self.env.get(k))
            return f"it was started with other settings: {', '.join(diff[:3])}"
        return None

    def _child(self, request: dict, fds: list[int]) -> None:
        """Become the command's process: its stdio, directory, environment and argv; run the CLI; exit."""
        code = 1
        try:
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            fds.clear()
            self.sel.close()
            self.listener.close()
            for conn, _, _ in self.children.values():
                conn.close()
            for s in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(s, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            os.environ[_CHILD_ENV] = "1"
            _reopen_stdio(request.get("encodings") or [None] * 3)
            import torch
            torch.set_num_threads(self.threads)  # as a fresh process has it; the CLI then picks its count
            if len(self.samples) == 2:
                from .cli_setup import inherit_busy_sample
                inherit_busy_sample(*self.samples[0])
            sys.argv = ["docreader", *request["argv"]]
            from .cli import app
            try:
                app(args=request["argv"], prog_name="docreader")
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - the child must exit here whatever happened
            import traceback
            traceback.print_exc()
        finally:
            for s in (sys.stdout, sys.stderr):
                try:
                    s.flush()
                except Exception:  # noqa: BLE001
                    pass
            os._exit(code)


def _reopen_stdio(encodings: list) -> None:
    """stdin/stdout/stderr on the client's descriptors (now 0, 1, 2), with its encodings; line-buffered on
    a terminal, as Python does."""
    import io
    made = []
    for fd, enc, mode in zip((0, 1, 2), encodings, ("r", "w", "w")):
        encoding, errors = enc if enc else ("utf-8", "strict" if fd < 2 else "backslashreplace")
        raw = io.FileIO(fd, mode, closefd=False)
        buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
        made.append(io.TextIOWrapper(buffered, encoding=encoding, errors=errors,
                                     line_buffering=mode == "w" and (fd == 2 or os.isatty(fd))))
    sys.stdin, sys.stdout, sys.stderr = made
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = made


def stop() -> bool:
    """Ask a running server to stop (SIGTERM to the process holding the socket) -> whether one was running."""
    path = socket_path()
    if not path.exists():
        return False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    except OSError:
        path.unlink(missing_ok=True)
        return False
    finally:
        sock.close()
    _kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not path.exists():
            break
        time.sleep(0.05)
    return True


def serve(idle_s: float = DEFAULT_IDLE_S, say=print) -> None:
    """Warm up, listen, serve until idle or stopped."""
    server = Server(idle_s, say)
    server.check_free()
    try:
        took = server.warm()
        server.listen()
        say(f"docreader serve: ready in {took:.1f} s on {socket_path()} (pid {os.getpid()}); `docreader ask` "
            f"and `chat` now start here. Stops after {idle_s / 60:.0f} min idle, on Ctrl-C or "
            "`docreader serve --stop`.")
        sys.stdout.flush()
        server.run()
    finally:
        server.close()
