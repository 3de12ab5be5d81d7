"""Run untrusted Python (model-written code + its tests) in a sandbox (DESIGN §7, round 3).

Every program runs in a fresh ``python -I -B`` in an empty temporary folder, never in the tabom
process: no environment but ``PATH``/``LANG``, no stdin, output capped, limits on CPU time,
address space, file size and processes (``setrlimit`` inside the child, before the program
starts), and a wall-clock timeout that kills the whole process group. With bubblewrap
(``bwrap``) it also gets new user, pid, network, IPC and UTS namespaces, all capabilities
dropped, a file system holding only the interpreter's folders (read-only), ``/dev``, ``/proc``
and the temporary folder (the only writable place), and is killed with its namespace when tabom
or the timeout ends it. Without ``bwrap`` a :class:`Sandbox` refuses to run anything unless
built with ``weak_isolation=True`` (docs/models.md says what that mode does not protect).

A pass means the program ran to its end: a driver executes it and then writes a random nonce
as the last line of stdout; exit code 0 without the nonce (``sys.exit(0)`` or ``os._exit(0)``
before the tests, a killed interpreter) fails. (The nonce guards against early exits, not
against a program written to forge it: it shares the driver's process.) Programs run in parallel on a thread pool
(each thread waits on one child process) and verdicts are cached by a hash of the program and
the limits. Run: ``Sandbox().run_many([program, ...])``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tabom.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, check_ranges
from tabom.errors import TabomError

Status = Literal["passed", "failed", "timeout", "error"]

WEAK_FLAG = "allow_weak_isolation"
"""The opt-in that lets code run without bubblewrap (a task spec field of the code tasks)."""


class SandboxUnavailable(TabomError):
    """No working bubblewrap and no opt-in to the weaker isolation."""


@dataclass(frozen=True)
class Verdict:
    """What happened to one program.

    Attributes:
        status: ``passed`` (ran to its end), ``failed`` (an exception, an exit before the end,
            too much output), ``timeout`` (wall or CPU time) or ``error`` (the sandbox itself
            could not run it).
        reason: a short reason (the last line of stderr, the limit hit, ...).
        seconds: wall time of the run (a cached verdict keeps the first run's).
    """

    status: Status
    reason: str
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one run.

    Attributes:
        timeout: wall-clock seconds before the whole process group is killed.
        cpu_seconds: CPU seconds (``RLIMIT_CPU``).
        memory_mb: address space in MiB (``RLIMIT_AS``).
        file_size_mb: largest file the program may write, MiB (``RLIMIT_FSIZE``).
        max_processes: 0 (default): the program may start no process (a seccomp filter
            refuses ``fork``/``clone``; threads work); n > 0: ``RLIMIT_NPROC`` = n, which
            counts all processes of the user and which the kernel does not apply to root.
        max_output_kb: stdout + stderr beyond this many KiB kills the run (failed).
    """

    timeout: float = field(default=10.0, metadata=POSITIVE)
    cpu_seconds: int = field(default=10, metadata=AT_LEAST_1)
    memory_mb: int = field(default=1024, metadata=AT_LEAST_1)
    file_size_mb: int = field(default=16, metadata=AT_LEAST_1)
    max_processes: int = field(default=0, metadata=NON_NEGATIVE)
    max_output_kb: int = field(default=1024, metadata=AT_LEAST_1)

    def __post_init__(self) -> None:
        check_ranges(self)


# Runs inside the child: limits first, then the program as __main__, then the nonce as the
# last line of stdout and an immediate exit (no atexit handler can print after it).
DRIVER = r"""
import os, resource, sys
_nonce = sys.argv.pop()
_cpu, _mem, _fsize, _nproc = (int(x) for x in sys.argv[1:5])
_bpf = bytes.fromhex(sys.argv[5])
if _bpf:  # no new processes: a seccomp filter (the kernel ignores RLIMIT_NPROC for root)
    import ctypes
    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
    _libc = ctypes.CDLL(None, use_errno=True)
    _p = _Prog(len(_bpf) // 8, _bpf)
    if _libc.prctl(38, 1, 0, 0, 0) or _libc.prctl(22, 2, ctypes.byref(_p), 0, 0):
        raise SystemExit("sandbox: cannot install the seccomp filter")
    del ctypes, _Prog, _libc, _p
def _lim(kind, value, extra=0):
    soft, hard = resource.getrlimit(kind)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    top = value + extra if hard == resource.RLIM_INFINITY else min(value + extra, hard)
    resource.setrlimit(kind, (value, top))
_lim(resource.RLIMIT_CPU, _cpu, 1)  # SIGXCPU at the limit, SIGKILL a second later
_lim(resource.RLIMIT_AS, _mem)
_lim(resource.RLIMIT_FSIZE, _fsize)
_lim(resource.RLIMIT_NPROC, _nproc)
_lim(resource.RLIMIT_CORE, 0)
sys.argv[:] = ["main.py"]
_write, _exit = os.write, os._exit
with open("main.py", encoding="utf-8") as _f:
    _code = compile(_f.read(), "main.py", "exec")
del _f
exec(_code, {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__})
for _s in (sys.stdout, sys.stderr):
    try:
        _s.flush()
    except Exception:
        pass
_write(1, ("\n" + _nonce + "\n").encode())
_exit(0)
"""


_SECCOMP_ARCH = {  # machine -> (audit arch, fork, vfork, clone, clone3); -1: no such call
    "x86_64": (0xC000003E, 57, 58, 56, 435),
    "aarch64": (0xC00000B7, -1, -1, 220, 435),
}


def no_fork_filter() -> bytes:
    """A seccomp BPF program that refuses new processes and allows everything else.

    ``fork``, ``vfork`` and ``clone`` without ``CLONE_THREAD`` fail with EAGAIN (threads still
    work), ``clone3`` with ENOSYS (the C library then falls back to ``clone``), and every call
    of a foreign ABI (x32, i386 on x86_64) with ENOSYS. Empty on a machine without a table.
    """
    import platform
    import struct

    arch = _SECCOMP_ARCH.get(platform.machine())
    if arch is None:
        return b""
    audit, fork, vfork, clone, clone3 = (x & 0xFFFFFFFF for x in arch)
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eagain, enosys = 0x7FFF0000, 0x00050000 | 11, 0x00050000 | 38
    prog = [  # (code, jt, jf, k); a jump goes to the next index + offset
        (ld, 0, 0, 4),  # 0: arch
        (jeq, 0, 10, audit),  # 1: foreign ABI -> 12
        (ld, 0, 0, 0),  # 2: syscall number
        (jge, 8, 0, 0x40000000),  # 3: x32 -> 12
        (jeq, 5, 0, fork),  # 4: -> 10
        (jeq, 4, 0, vfork),  # 5: -> 10
        (jeq, 5, 0, clone3),  # 6: -> 12
        (jeq, 0, 3, clone),  # 7: other calls -> 11
        (ld, 0, 0, 16),  # 8: clone flags (low word of args[0])
        (jset, 1, 0, 0x00010000),  # 9: CLONE_THREAD -> 11, else 10
        (ret, 0, 0, eagain),  # 10
        (ret, 0, 0, allow),  # 11
        (ret, 0, 0, enosys),  # 12
    ]
    return b"".join(struct.pack("<HBBI", *ins) for ins in prog)


@functools.lru_cache(maxsize=8)
def bwrap_works(bwrap: str | None = None) -> bool:
    """Whether ``bwrap`` exists and can create user, pid, net and IPC namespaces here."""
    exe = bwrap or shutil.which("bwrap")
    if exe is None:
        return False
    probe = [exe, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc"]
    probe += ["--ro-bind", "/", "/", "--", "/bin/sh", "-c", "exit 0"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _interpreter_dirs(python: str) -> list[str]:
    """Folders the interpreter needs, read-only: its prefixes and its binary's folders."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    dirs |= {str(Path(python).parent), str(Path(python).resolve().parent.parent)}
    out = sorted(d for d in dirs if d and Path(d).is_dir())
    # drop a folder inside another one already bound
    return [d for d in out if not any(d != o and d.startswith(o.rstrip("/") + "/") for o in out)]


def bwrap_command(bwrap: str, python: str, workdir: str) -> list[str]:
    """The ``bwrap`` argument list: namespaces, read-only system and interpreter, one rw folder."""
    cmd = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc"]
    cmd += ["--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--cap-drop", "ALL"]
    cmd += ["--hostname", "sandbox"]
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        p = Path(top)
        if p.is_symlink():
            cmd += ["--symlink", os.readlink(p), top]
        elif p.is_dir():
            cmd += ["--ro-bind", top, top]
    for d in _interpreter_dirs(python):
        if not d.startswith("/usr/"):
            cmd += ["--ro-bind", d, d]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--bind", workdir, "/sandbox"]
    cmd += ["--chdir", "/sandbox", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin"]
    cmd += ["--setenv", "HOME", "/sandbox", "--setenv", "LANG", "C.UTF-8", "--"]
    return cmd


def _last_line(text: bytes) -> str:
    lines = [ln for ln in text.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].strip()[:200] if lines else ""


class Sandbox:
    """Runs Python programs isolated, in parallel, with cached verdicts.

    Args:
        limits: per-run resource limits.
        workers: programs run at once (0: one per CPU).
        weak_isolation: run without bubblewrap when it is missing (rlimits, a cleared
            environment and an empty folder only; no namespaces). With bubblewrap present it
            is used whatever this says.
        python: the interpreter (default: tabom's own).
        cache_size: verdicts kept (least recently used dropped).

    Raises:
        SandboxUnavailable: no working bubblewrap and ``weak_isolation`` false.
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        workers: int = 0,
        weak_isolation: bool = False,
        python: str | None = None,
        cache_size: int = 100_000,
    ) -> None:
        if workers < 0:
            raise TabomError(f"sandbox workers must be >= 0 (0 = one per CPU), got {workers}")
        self.limits = limits or SandboxLimits()
        self.workers = workers or os.cpu_count() or 1
        self.python = python or sys.executable
        bwrap = shutil.which("bwrap")
        self.bwrap = bwrap if bwrap is not None and bwrap_works(bwrap) else None
        if self.bwrap is None and not weak_isolation:
            raise SandboxUnavailable(
                "code verification needs bubblewrap (`bwrap`, Debian/Ubuntu: apt-get install "
                "bubblewrap) with user namespaces, and none works here; to run model-written "
                f"code with weaker isolation (no namespaces: it can read your files, use the "
                f"network and signal your processes) set {WEAK_FLAG}=true in the task spec"
            )
        self.mode = "bwrap" if self.bwrap else "weak"
        self._cache: OrderedDict[str, Verdict] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.runs = 0  # programs actually executed (not answered from the cache)

    # ------------------------------------------------------------------ one run

    def _key(self, program: str) -> str:
        h = hashlib.sha256(program.encode("utf-8", "surrogatepass"))
        h.update(repr((self.limits, self.mode, self.python)).encode())
        return h.hexdigest()

    def _command(self, workdir: str, nonce: str) -> list[str]:
        lim = self.limits
        argv = [self.python, "-I", "-B", "-c", DRIVER]
        argv += [str(lim.cpu_seconds), str(lim.memory_mb << 20), str(lim.file_size_mb << 20)]
        bpf = no_fork_filter() if lim.max_processes == 0 else b""
        argv += [str(max(1, lim.max_processes)), bpf.hex(), nonce]
        if self.bwrap is None:
            return argv
        return bwrap_command(self.bwrap, self.python, workdir) + argv

    def execute(self, program: str) -> Verdict:
        """Run one program now (no cache): its verdict."""
        lim = self.limits
        nonce = secrets.token_hex(16)
        workdir = tempfile.mkdtemp(prefix="tabom-sandbox-")
        t0 = time.monotonic()
        try:
            Path(workdir, "main.py").write_text(program, encoding="utf-8", errors="replace")
            try:
                proc = subprocess.Popen(
                    self._command(workdir, nonce),
                    cwd=workdir,
                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # its own process group, killed as one
                    close_fds=True,
                )
            except OSError as e:
                return Verdict("error", f"cannot start the sandbox: {e}", 0.0)
            out, err, over, timed_out = _collect(proc, t0 + lim.timeout, lim.max_output_kb << 10)
            seconds = round(time.monotonic() - t0, 4)
        finally:
            _rmtree(workdir)
        rc = proc.returncode
        if self.bwrap is not None and rc is not None and rc > 128:
            rc = -(rc - 128)  # bwrap reports a child killed by signal s as 128 + s
        if timed_out:
            return Verdict("timeout", f"wall time over {lim.timeout:g} s", seconds)
        if over:
            return Verdict("failed", f"output over {lim.max_output_kb} KiB", seconds)
        if rc == 0 and out.endswith(f"\n{nonce}\n".encode()):
            return Verdict("passed", "ran to the end", seconds)
        if rc == -signal.SIGXCPU:
            return Verdict("timeout", f"CPU time over {lim.cpu_seconds} s", seconds)
        if rc == 1 and err.startswith((b"bwrap: ", b"sandbox: ")):  # before the program ran
            return Verdict("error", _last_line(err), seconds)
        if rc == 0:
            return Verdict("failed", "exited before the end of the tests (no end marker)", seconds)
        if rc is not None and rc < 0:
            return Verdict("failed", f"killed by signal {-rc}", seconds)
        return Verdict("failed", _last_line(err) or f"exit code {rc}", seconds)

    def run(self, program: str) -> Verdict:
        """The verdict of one program (cached)."""
        key = self._key(program)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        verdict = self.execute(program)
        with self._lock:
            self.runs += 1
            if verdict.status != "error":  # a sandbox failure may be transient
                self._cache[key] = verdict
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return verdict

    def run_many(self, programs: Sequence[str]) -> list[Verdict]:
        """Verdicts of many programs, ``workers`` at a time, in the input order.

        A program repeated in the list runs once.
        """
        unique = list(dict.fromkeys(programs))
        if len(unique) <= 1 or self.workers == 1:
            found = {p: self.run(p) for p in unique}
        else:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(unique))) as pool:
                found = dict(zip(unique, pool.map(self.run, unique), strict=True))
        return [found[p] for p in programs]


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout and stderr until both close or a limit is hit; the process is reaped.

    Returns:
        ``(stdout tail, stderr tail, output over cap, timed out)``; tails are the last 64 KiB.
    """
    keep = 1 << 16
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    total, over, timed_out = 0, False, False
    sel = selectors.DefaultSelector()
    for f in bufs:
        sel.register(f, selectors.EVENT_READ)
    try:
        while sel.get_map() and not over:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                total += len(chunk)
                buf = bufs[key.fileobj]  # type: ignore[index]
                buf += chunk
                del buf[:-keep]
                if total > cap:
                    over = True
                    break
        if not (over or timed_out):
            timed_out = not _exited(proc.pid, deadline)
    finally:
        sel.close()
        _kill_group(proc)
        proc.wait()
        for f in bufs:
            f.close()  # type: ignore[union-attr]
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), over, timed_out


def _exited(pid: int, deadline: float) -> bool:
    """Wait until ``pid`` exits or the deadline, without reaping it (its group id stays ours)."""
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (it leads it); leftovers of a finished run too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _rmtree(path: str) -> None:
    """Remove the run's folder even if the program took its permissions away."""

    def fix(func, p, _exc):  # noqa: ANN001
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "DRIVER",
    "Sandbox",
    "SandboxLimits",
    "SandboxUnavailable",
    "Status",
    "Verdict",
    "WEAK_FLAG",
    "bwrap_command",
    "bwrap_works",
]
