"""Hard per-item timeouts and batch verification over a pool of worker processes.

Why processes: ``signal.alarm`` only works in the main thread, and a Python signal handler cannot interrupt a
long C-level computation (a big-integer power inside sympy). Each worker therefore interrupts itself with a
soft timer at ``config.timeout`` (it still answers), and the parent kills the worker at
``config.timeout + config.grace`` if it still has not answered (a fresh worker replaces it). A worker whose item
any timer interrupted (the soft timeout or the symbolic budget) answers and is then replaced too: an interrupt
inside a parse can leave the LaTeX grammar broken for every later parse in that process. The parent side only
waits on pipes, so it works from any thread, including threads of a training loop.

Workers never fork the caller: forking a multithreaded parent (JAX, tokenizers) is unsafe, and the
``spawn``/``forkserver`` start methods re-run the caller's main script in the child. Instead one fresh template
interpreter (``python -c ...`` over a socket pair) imports the verifier, warms up the LaTeX grammar once, and
forks each worker from itself (single-threaded, so forking it is safe); the sockets reach it by fd passing.
Where that is not available, each worker is its own fresh interpreter and warms up before it takes work.
"""

from __future__ import annotations

import atexit
import collections
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection, wait

from .equivalence import INTERRUPTS, judge
from .verdict import PARSE_ERROR, TIMEOUT, Verdict, VerifierConfig

__all__ = ["VerifierPool", "check_inline"]

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_STARTUP_TIMEOUT = 120.0  # seconds for a worker to import sympy/math-verify on a loaded machine


# One of each construct the LaTeX grammar sees often (functions, sets, intervals, matrices, relations, ...).
_WARMUP = [
    ("x^2", "\\boxed{x \\cdot x}"),
    ("f(x)=2x+1", "\\boxed{f(x) = 1 + 2x}"),
    ("(0,1) \\cup (2,\\infty)", "\\boxed{(0,1)\\cup(2,\\infty)}"),
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\frac{\\pi}{2})}"),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\boxed{\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}}"),
    ("\\frac{\\sin x}{\\cos x}", "\\boxed{\\tan x}"),
    ("x \\geq 3", "\\boxed{3 \\le x}"),
    ("1 \\pm \\sqrt{19}", "\\boxed{1 \\pm \\sqrt{19}}"),
    ("52_8", "\\boxed{52_8}"),
    ("e^{-2 t}+C_{1} \\cos (t)", "\\boxed{C_{1} \\cos(t) + e^{-2t}}"),
    ("\\frac{v_{0}}{r_{0}}", "\\boxed{v_0/r_0}"),
    ("(-\\infty, 0) \\cup\\{1\\}", "\\boxed{(-\\infty,0)\\cup\\{1\\}}"),
    ("\\frac{d x}{d t}=k x-a", "\\boxed{\\frac{dx}{dt}=kx-a}"),
    # Generic answer shapes (each warms other grammar decisions): functions, subscripts, Greek letters,
    # floors, binomials, factorials, logs, derivatives, primes, unions, complex numbers, vectors.
    ("\\sin (2 t)+C_{2} \\cos (2 t)", "\\boxed{C_2\\cos(2t)+\\sin(2t)}"),
    ("\\frac{\\omega_{0}^{2}}{(s+\\alpha)^{2}+\\beta^{2}}", "\\boxed{\\omega_0^2/((s+\\alpha)^2+\\beta^2)}"),
    ("\\left\\lfloor \\frac{n}{2} \\right\\rfloor", "\\boxed{\\lfloor n/2 \\rfloor}"),
    ("\\lceil \\log_{2} n \\rceil + 1", "\\boxed{1+\\lceil \\log_2 n\\rceil}"),
    ("\\binom{2n}{n}", "\\boxed{\\frac{(2n)!}{n!^2}}"),
    ("\\frac{\\ln 3}{\\ln 2}", "\\boxed{\\log_2 3}"),
    ("y^{\\prime}+2 y=0", "\\boxed{y'+2y=0}"),
    ("(-2, 1] \\cup [3, 5)", "\\boxed{(-2,1]\\cup[3,5)}"),
    ("\\frac{1+i}{2}", "\\boxed{\\frac{1}{2}+\\frac{i}{2}}"),
    ("\\begin{pmatrix} 2 \\\\ -1 \\\\ 3 \\end{pmatrix}", "\\boxed{\\begin{pmatrix}2\\\\-1\\\\3\\end{pmatrix}}"),
    ("a=1, b=-2", "\\boxed{a=1,b=-2}"),
    ("x \\in (-\\infty, 3]", "\\boxed{(-\\infty,3]}"),
    ("\\frac{m g}{k} e^{-\\frac{k t}{m}}", "\\boxed{\\frac{mg}{k}e^{-kt/m}}"),
    ("2 \\sqrt[3]{4}", "\\boxed{2\\cdot 4^{1/3}}"),
    ("|x-2|+|y|", "\\boxed{|y|+|x-2|}"),
    ("5 \\times 10^{-3}", "\\boxed{0.005}"),
    ("\\tan^{2} \\theta", "\\boxed{\\sec^2\\theta-1}"),
    ("n! \\cdot 2^{n}", "\\boxed{2^n n!}"),
    ("\\dot{x}(t)=-\\gamma x", "\\boxed{\\dot{x}(t)=-\\gamma x}"),
    ("\\{-1, \\sqrt{2}\\}", "\\boxed{\\{\\sqrt 2, -1\\}}"),
]


class _SoftTimeout(BaseException):
    """Raised by the worker's timer. A BaseException, so library code that catches Exception cannot eat it."""


def _raise_soft_timeout(signum, frame):
    INTERRUPTS[0] += 1
    raise _SoftTimeout()


def _coerce(gold, prediction):
    """Keep only picklable, meaningful inputs (anything else is judged as missing)."""
    if not isinstance(gold, (str, int, float, list, tuple)) or isinstance(gold, bool):
        gold = None
    elif isinstance(gold, (list, tuple)):
        gold = [g for g in gold if isinstance(g, (str, int, float)) and not isinstance(g, bool)]
    if not isinstance(prediction, str):
        prediction = None
    return gold, prediction


def _judge_with_soft_timer(gold, prediction, cfg: VerifierConfig) -> Verdict:
    """Run ``judge`` under an interval timer. Only call from the main thread of a process."""
    old = signal.signal(signal.SIGALRM, _raise_soft_timeout)
    try:
        signal.setitimer(signal.ITIMER_REAL, max(cfg.timeout, 1e-3))
        try:
            return judge(gold, prediction, cfg)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _SoftTimeout:
        return Verdict(TIMEOUT, f"verification exceeded {cfg.timeout:g} s")
    except RecursionError:
        return Verdict(PARSE_ERROR, "expression too deeply nested")
    except Exception as e:  # noqa: BLE001 - a verdict, never an exception
        return Verdict(PARSE_ERROR, f"verifier error ({type(e).__name__})")
    finally:
        signal.signal(signal.SIGALRM, old)


def check_inline(gold, prediction, cfg: VerifierConfig = VerifierConfig()) -> Verdict:
    """Verify in the calling process. Timeout only in the main thread (a soft timer); no hard kill.

    Used where child processes cannot be started (inside a daemonic worker of another pool).
    """
    gold, prediction = _coerce(gold, prediction)
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _judge_with_soft_timer(gold, prediction, cfg)
    try:
        return judge(gold, prediction, cfg)
    except Exception as e:  # noqa: BLE001
        return Verdict(PARSE_ERROR, f"verifier error ({type(e).__name__})")


def _warm_up() -> None:
    """Imports and the LaTeX grammar's prediction caches, so real items are not charged for them: ANTLR builds
    its decision tables lazily, and the first parse of each construct costs several times a later one. No timer
    is armed (symbolic_budget 0): an interrupt inside a cold parse would leave the grammar broken in this process
    and, in the template, in every worker forked from it."""
    warm = VerifierConfig(string_match=False, timeout=30.0, symbolic_budget=0.0)
    for gold, pred in _WARMUP:
        try:
            judge(gold, pred, warm)
        except Exception:  # noqa: BLE001 - warm-up must never stop a worker from starting
            pass


def _worker_main(conn, max_memory_mb: int | None, warm: bool = True) -> None:
    """Worker loop: receive (index, gold, prediction, config), send back (index, verdict)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if max_memory_mb:
        try:
            import resource

            limit = int(max_memory_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass
    if warm:
        _warm_up()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if msg is None:
            return
        idx, gold, prediction, cfg = msg
        before = INTERRUPTS[0]
        try:
            verdict = _judge_with_soft_timer(gold, prediction, cfg)
        except _SoftTimeout:  # the timer fired between judge returning and being disarmed
            verdict = Verdict(TIMEOUT, f"verification exceeded {cfg.timeout:g} s")
        except MemoryError:
            verdict = Verdict(PARSE_ERROR, "verifier ran out of memory")
        retire = INTERRUPTS[0] != before  # a timer cut into this item: the parser may be broken from here on
        try:
            conn.send((idx, verdict, retire))
        except (OSError, ValueError):
            return
        if retire:
            return


def _worker_entry() -> None:
    """Entry point of a worker interpreter: ``argv = [fd, max_memory_mb]``."""
    fd, mem = int(sys.argv[1]), int(sys.argv[2])
    _worker_main(Connection(fd), mem or None)


def _template_entry() -> None:
    """Entry point of the template interpreter: warm up once, then fork one warm worker per request.

    Forking is safe here (unlike forking the caller): this interpreter is single-threaded and only ever runs
    the verifier. Workers forked from it start with the grammar's caches already built, in milliseconds, so a
    worker killed on a timeout is replaced at no cost. Protocol over the control socket: the template sends
    ``b"R"`` when warm; each request is one byte with a socket fd attached (SCM_RIGHTS); the reply is the
    worker's pid as 4 bytes.
    """
    fd, mem = int(sys.argv[1]), int(sys.argv[2])
    ctrl = socket.socket(fileno=fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps exited workers
    _warm_up()
    ctrl.sendall(b"R")
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctrl, 16, 1)
        except (OSError, KeyboardInterrupt):
            return
        if not msg or not fds:
            return
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ctrl.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _worker_main(Connection(fds[0]), mem or None, warm=False)
            except BaseException:  # noqa: BLE001 - a forked child must never return into the template loop
                code = 1
            finally:
                os._exit(code)
        os.close(fds[0])
        try:
            ctrl.sendall(struct.pack("!i", pid))
        except OSError:
            return


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


class _Template:
    """The parent's handle on the template interpreter (see :func:`_template_entry`)."""

    def __init__(self, max_memory_mb):
        parent_sock, child_sock = socket.socketpair()
        child_fd = child_sock.fileno()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from exploresft_jax.rewards.pool import _template_entry; _template_entry()",
             str(child_fd), str(int(max_memory_mb or 0))],
            pass_fds=(child_fd,), env=_child_env(), stdin=subprocess.DEVNULL, close_fds=True)
        child_sock.close()
        self.sock = parent_sock
        self.ready = False

    def _recv_exact(self, n: int, deadline: float) -> bytes | None:
        buf = b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return None
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def wait_ready(self, deadline: float) -> bool:
        try:
            self.ready = self.ready or self._recv_exact(1, deadline) == b"R"
        except OSError:
            self.ready = False
        return self.ready

    def alive(self) -> bool:
        return self.ready and self.proc.poll() is None

    def fork_worker(self):
        """``(pid, parent socket)`` of a new warm worker, or None if the template failed."""
        a, b = socket.socketpair()
        try:
            socket.send_fds(self.sock, [b"S"], [b.fileno()])
            reply = self._recv_exact(4, time.monotonic() + 30.0)
        except OSError:
            reply = None
        finally:
            b.close()
        if reply is None:
            a.close()
            self.ready = False
            return None
        return struct.unpack("!i", reply)[0], a

    def stop(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass


class _Worker:
    def __init__(self, max_memory_mb, template: _Template | None = None):
        self.pid = None
        if template is not None and template.alive():
            forked = template.fork_worker()
            if forked is not None:
                self.pid, sock = forked
                self.proc = None
                self.conn = Connection(sock.detach())
                self.ready = False
                return
        self._start_interpreter(max_memory_mb)

    def _start_interpreter(self, max_memory_mb):
        parent_sock, child_sock = socket.socketpair()
        child_fd = child_sock.fileno()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from exploresft_jax.rewards.pool import _worker_entry; _worker_entry()",
             str(child_fd), str(int(max_memory_mb or 0))],
            pass_fds=(child_fd,), env=_child_env(), stdin=subprocess.DEVNULL, close_fds=True)
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.ready = False

    def wait_ready(self, deadline: float) -> bool:
        """Block until the worker has warmed up; False if it died or missed the deadline."""
        try:
            while not self.ready:
                if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                    return False
                msg = self.conn.recv()
                self.ready = isinstance(msg, tuple) and msg and msg[0] == "ready"
        except (EOFError, OSError):
            return False
        return True

    def _alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        try:
            os.kill(self.pid, 0)  # a forked worker is the template's child, reaped by the kernel on exit
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True

    def _wait_gone(self, timeout: float) -> bool:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while self._alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def kill(self) -> None:
        try:
            if self.proc is not None:
                self.proc.kill()
            else:
                os.kill(self.pid, signal.SIGKILL)
            self._wait_gone(5)
        except OSError:
            pass
        try:
            self.conn.close()
        except OSError:
            pass

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self._wait_gone(1)
        except (OSError, ValueError):
            pass
        if self._alive():
            self.kill()
        else:
            try:
                self.conn.close()
            except OSError:
                pass


def _close_pool(ref) -> None:
    pool = ref()
    if pool is not None:
        pool.close()


class VerifierPool:
    """A pool of verifier worker processes with a hard timeout per item.

    Args:
      num_workers: worker processes (default: the number of CPUs). Workers start lazily, as many as needed.
      config: default :class:`VerifierConfig` for calls that do not pass one.
      max_memory_mb: address-space limit per worker (a runaway computation fails instead of swapping).
      use_template: fork workers from one warm template interpreter (POSIX): the grammar warm-up is paid once
        per pool, and a worker killed on a timeout is replaced in milliseconds. Without it (or if the
        template fails to start), each worker is a fresh interpreter that warms up on its own.

    Thread-safe: concurrent calls are served one batch at a time. Use as a context manager or call
    :meth:`close`; pools left open are closed at interpreter exit.
    """

    def __init__(self, num_workers: int | None = None, config: VerifierConfig | None = None,
                 max_memory_mb: int | None = 4096, use_template: bool = True):
        self.num_workers = max(1, int(num_workers or os.cpu_count() or 1))
        self.config = config or VerifierConfig()
        self.max_memory_mb = max_memory_mb
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self.restarts = 0  # workers killed (timeouts) or lost, for monitoring
        # Workers are forked from one warm template interpreter when the platform allows it (POSIX fd passing).
        self.use_template = use_template and hasattr(socket, "send_fds") and hasattr(os, "fork")
        self._template: _Template | None = None
        self._template_failures = 0
        # A weak reference: registering the pool itself would keep every pool ever made alive.
        atexit.register(_close_pool, weakref.ref(self))

    # -- workers -------------------------------------------------------------------------------------------
    def _spawn(self, n: int) -> int:
        """Start ``n`` workers at once and wait until all are warm (caller holds the lock)."""
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        template = self._get_template(deadline)
        new = [_Worker(self.max_memory_mb, template) for _ in range(n)]
        started = 0
        for w in new:
            if w.wait_ready(deadline):
                self._idle.append(w)
                started += 1
            else:
                w.kill()
        return started

    def _get_template(self, deadline: float) -> _Template | None:
        """The warm template interpreter workers are forked from (started once); None if it cannot run."""
        if not self.use_template:
            return None
        if self._template is not None and not self._template.alive():
            self._template.stop()
            self._template = None
        if self._template is None and self._template_failures < 2:
            t = _Template(self.max_memory_mb)
            if t.wait_ready(deadline):
                self._template = t
            else:
                t.stop()
                self._template_failures += 1
        return self._template

    def start(self, n: int | None = None) -> VerifierPool:
        """Start ``n`` workers now (default: all), so the first batch does not pay the start-up cost."""
        with self._lock:
            self._spawn(max(0, min(self.num_workers, n or self.num_workers) - len(self._idle)))
        return self

    def close(self) -> None:
        """Stop all workers. The pool can be used again afterwards (workers restart lazily)."""
        with self._lock:
            if os.getpid() != self._pid:  # a forked copy of the pool does not own these workers
                self._idle, self._template = [], None
                return
            for w in self._idle:
                w.stop()
            self._idle = []
            if self._template is not None:
                self._template.stop()
                self._template = None

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- verification --------------------------------------------------------------------------------------
    def check(self, gold, prediction, config: VerifierConfig | None = None) -> Verdict:
        """Verdict for one (gold, prediction) pair; see :meth:`check_batch`."""
        return self.check_batch([gold], [prediction], config=config)[0]

    def check_batch(self, golds, predictions, config: VerifierConfig | None = None,
                    progress: bool = False) -> list[Verdict]:
        """Verdicts for ``zip(golds, predictions)``, in order, each under a hard timeout.

        ``golds`` may also be a single gold answer, used for every prediction. Never raises on bad items: they
        get a ``no_answer``/``parse_error``/``timeout`` verdict.
        """
        predictions = list(predictions)
        if isinstance(golds, (str, int, float)):
            golds = [golds] * len(predictions)
        golds = list(golds)
        if len(golds) != len(predictions):
            raise ValueError(f"{len(golds)} gold answers for {len(predictions)} predictions")
        cfg = config or self.config
        items = [_coerce(g, p) for g, p in zip(golds, predictions)]
        if not items:
            return []
        with self._lock:
            if os.getpid() != self._pid:
                self._idle, self._template, self._pid = [], None, os.getpid()
            return self._run(items, cfg, progress)

    def _run(self, items, cfg: VerifierConfig, progress: bool) -> list[Verdict]:
        want = min(self.num_workers, len(items))
        results: list[Verdict | None] = [None] * len(items)
        pending = collections.deque(range(len(items)))
        busy: dict = {}  # conn -> (worker, index, deadline)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(items), desc="verify", unit="item")
        try:
            while pending or busy:
                # Start workers lazily, and replace those killed on a timeout only while there is work left.
                if pending and len(self._idle) + len(busy) < want:
                    self._spawn(want - len(self._idle) - len(busy))
                    if not self._idle and not busy:
                        raise RuntimeError("verifier worker processes failed to start")
                while pending and self._idle:
                    worker = self._idle.pop()
                    idx = pending.popleft()
                    gold, pred = items[idx]
                    try:
                        worker.conn.send((idx, gold, pred, cfg))
                    except (OSError, ValueError):
                        worker.kill()
                        self.restarts += 1
                        pending.appendleft(idx)
                        continue
                    busy[worker.conn] = (worker, idx, time.monotonic() + cfg.timeout + cfg.grace)
                if not busy:
                    continue  # every send failed (dead workers): start replacements first
                next_deadline = min(d for _, _, d in busy.values())
                ready = wait(list(busy), timeout=max(0.0, next_deadline - time.monotonic()))
                for conn in ready:
                    worker, idx, _ = busy.pop(conn)
                    try:
                        got_idx, verdict, retire = conn.recv()
                        if got_idx != idx:
                            raise OSError("out-of-order reply")
                        if retire:  # interrupted mid-item (see equivalence.INTERRUPTS): replaced, not reused
                            worker.kill()
                            self.restarts += 1
                        else:
                            self._idle.append(worker)
                    except (EOFError, OSError, ValueError, TypeError):
                        worker.kill()
                        self.restarts += 1
                        verdict = Verdict(PARSE_ERROR, "verifier process died")
                    results[idx] = verdict
                    if bar is not None:
                        bar.update(1)
                now = time.monotonic()
                # A reply already in the pipe is not a timeout (the parent may have been busy starting a worker).
                for conn in [c for c, (_, _, d) in busy.items() if d <= now and not c.poll(0)]:
                    worker, idx, _ = busy.pop(conn)
                    worker.kill()
                    self.restarts += 1
                    results[idx] = Verdict(TIMEOUT, f"verification exceeded {cfg.timeout:g} s (worker killed)")
                    if bar is not None:
                        bar.update(1)
        except BaseException:
            # Interrupted (e.g. KeyboardInterrupt): workers still busy are in an unknown state.
            for worker, _, _ in busy.values():
                worker.kill()
            raise
        finally:
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]
