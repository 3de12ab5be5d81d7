"""MATH-style problems with LaTeX answers, checked by math-verify (DESIGN §7, round 3).

Reads any JSONL with ``problem`` and either ``answer`` or a ``solution`` whose last
``\\boxed{...}`` is the answer (MATH, PRM12K, MATH-500). The prompt asks for the final answer
within ``\\boxed{}``; a response's answer is its last ``\\boxed{...}`` (balanced braces), and
it is right when math-verify (Apache-2.0, optional extra ``math``) finds it equivalent to the
reference. math-verify bounds its own time with ``signal.alarm``, which works only in a main
thread and cannot interrupt a long C-level computation (``10^{10^{10^{10}}}``), so every check
runs in a worker process with an address-space limit, and the parent kills a worker that
misses the deadline: such an answer is wrong, and the worker is restarted.

An answer is never run as code: math-verify parses LaTeX with an ANTLR grammar, and its only
``eval`` path (sympy's ``parse_expr`` in the expression fallback) receives only strings its
regex admits, digits and the operators ``+ - * × / ÷ ^ ( )``, so no name can be reached; the
cost of such arithmetic is bounded by the worker's deadline and memory limit
(``tests/test_math_task.py`` checks that answers written as Python leave no marker file).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import queue
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tabom.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, check_ranges
from tabom.errors import TabomError
from tabom.tasks.base import DataFileError, Example, FileTask, read_jsonl, require_str

PROMPT_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
"""Appended to every problem: the usual instruct prompt of the math-tuned chat models."""
MAX_RESPONSE_CHARS = 1 << 16
"""Longer responses are wrong without being read."""
MAX_ANSWER_CHARS = 1000
"""A boxed answer longer than this is wrong without being parsed."""


class MathVerifyMissing(TabomError):
    """The ``math`` task needs the optional math-verify package."""


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) of ``text``.

    Braces must balance (``\\{`` and ``\\}`` are literal braces and do not count); ``\\boxed 5``
    (no braces) gives ``5``. ``None``: no box, or the last one never closes.
    """
    if len(text) > MAX_RESPONSE_CHARS:
        return None
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    if i < len(text) and text[i] == " ":
        rest = text[i:].strip()
        token = rest.split("$")[0].split()[0] if rest else ""
        return token or None
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c == "\\" and j + 1 < len(text) and text[j + 1] in "{}":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
        j += 1
    return None


# The worker: reads {"gold", "pred"} lines, answers {"ok", "error"} lines. Its own path entry is
# dropped first, so that no folder named like a stdlib module shadows it.
WORKER = r"""
import sys
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
import json, logging, resource
mem = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
logging.disable(logging.CRITICAL)
from math_verify import parse, verify
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    try:
        gold = parse("\\boxed{" + job["gold"] + "}", parsing_timeout=None)
        pred = parse("\\boxed{" + job["pred"] + "}", parsing_timeout=None)
        ok = bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=None))
        reply = {"ok": ok, "error": None}
    except BaseException as e:
        reply = {"ok": False, "error": type(e).__name__}
    print(json.dumps(reply), flush=True)
"""


class _Worker:
    """One math-verify process; restarted after a timeout or a crash."""

    def __init__(self, memory_mb: int) -> None:
        self.memory_mb = memory_mb
        self.proc: subprocess.Popen | None = None
        self.buf = b""

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(self.memory_mb << 20)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.buf = b""
        reply = self._read(time.monotonic() + 120)
        if reply is None or not reply.get("ready"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # then its stderr ends
            err = self.proc.stderr.read().decode(errors="replace")[-500:]  # type: ignore[union-attr]
            self.stop()
            raise TabomError(f"math: the math-verify worker did not start: {err}")

    def _read(self, deadline: float) -> dict | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    return None
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return None
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def check(self, gold: str, pred: str, timeout: float) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"gold": gold, "pred": pred}) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.stop()
            return False
        reply = self._read(time.monotonic() + timeout)
        if reply is None:  # too slow, or it died (memory limit): wrong, and a fresh worker
            self.stop()
            return False
        return bool(reply.get("ok"))

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if f is not None:
                    f.close()
            self.proc = None


class MathVerifier:
    """Equivalence of LaTeX answers by math-verify, in worker processes, with a time bound.

    Args:
        timeout: seconds one check may take (then: not equivalent).
        workers: worker processes (checks run in parallel, one per worker).
        memory_mb: address-space limit of each worker, MiB.

    Raises:
        MathVerifyMissing: math-verify is not installed.
    """

    def __init__(self, timeout: float = 5.0, workers: int = 1, memory_mb: int = 4096) -> None:
        if importlib.util.find_spec("math_verify") is None:
            raise MathVerifyMissing(
                "the math task checks answers with math-verify, which is not installed: "
                "pip install 'tabom[math]' (or pip install math-verify)"
            )
        self.timeout = timeout
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all = [_Worker(memory_mb) for _ in range(max(1, workers))]
        for w in self._all:
            self._idle.put(w)
        self._cache: OrderedDict[str, bool] = OrderedDict()
        self._lock = threading.Lock()

    def equivalent(self, gold: str, pred: str | None) -> bool:
        """Whether ``pred`` (an extracted answer) equals ``gold``; never raises on bad input."""
        if pred is None or not pred.strip() or len(pred) > MAX_ANSWER_CHARS:
            return False
        key = hashlib.sha256(json.dumps([gold, pred]).encode("utf-8", "replace")).hexdigest()
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        worker = self._idle.get()
        try:
            ok = worker.check(gold, pred, self.timeout)
        finally:
            self._idle.put(worker)
        with self._lock:
            self._cache[key] = ok
            while len(self._cache) > 100_000:
                self._cache.popitem(last=False)
        return ok

    def equivalent_many(self, pairs: Sequence[tuple[str, str | None]]) -> list[bool]:
        """:meth:`equivalent` of each ``(gold, pred)``, spread over the workers."""
        if len(self._all) == 1 or len(pairs) <= 1:
            return [self.equivalent(g, p) for g, p in pairs]
        with ThreadPoolExecutor(max_workers=len(self._all)) as pool:
            return list(pool.map(lambda gp: self.equivalent(*gp), pairs))

    def close(self) -> None:
        """Stop the worker processes (they restart on the next check)."""
        for w in self._all:
            w.stop()

    def __del__(self) -> None:  # pragma: no cover - garbage collection, interpreter exit
        try:  # noqa: SIM105 - at exit contextlib itself may be gone
            self.close()
        except Exception:
            pass


@dataclass
class MathTask(FileTask):
    """MATH-style problems from JSONL (``problem`` + ``answer``, or ``solution`` with ``\\boxed{}``).

    Attributes:
        path: the JSONL file :meth:`generate` samples from.
        gen_length: response length in tokens of the real model's tokenizer.
        timeout: seconds one equivalence check may take (then: wrong).
        workers: math-verify worker processes (0: one per CPU).
        name: registry name.
    """

    path: str | None = None
    gen_length: int = field(default=512, metadata=AT_LEAST_1)
    timeout: float = field(default=5.0, metadata=POSITIVE)
    workers: int = field(default=0, metadata=NON_NEGATIVE)
    name: str = field(default="math", init=False)
    _examples: list[Example] | None = field(default=None, init=False, repr=False)
    _verifier: MathVerifier | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_ranges(self)
        if importlib.util.find_spec("math_verify") is None:
            raise MathVerifyMissing(
                "the math task checks answers with math-verify, which is not installed: "
                "pip install 'tabom[math]' (or pip install math-verify)"
            )

    @property
    def verifier(self) -> MathVerifier:
        if self._verifier is None:
            self._verifier = MathVerifier(self.timeout, self.workers or os.cpu_count() or 1)
        return self._verifier

    def load(self, path: str | Path) -> list[Example]:
        """Read a MATH-style JSONL file.

        Returns:
            Examples with ids ``math-{file stem}-{line}``, the problem plus the boxed-answer
            instruction as prompt, the solution (else a one-line boxed answer) as reference
            response and ``data = {"target": the reference answer}``.

        Raises:
            DataFileError: no ``problem``, or neither an ``answer`` nor a ``solution`` with a
                closed ``\\boxed{}``.
        """
        path = Path(path)
        out = []
        for line, rec in read_jsonl(path):
            problem = require_str(path, line, rec, "problem")
            if "answer" in rec:
                target = require_str(path, line, rec, "answer").strip()
                if not target:
                    raise DataFileError(path, line, "answer", "empty")
            elif "solution" in rec:
                target = last_boxed(require_str(path, line, rec, "solution"))  # type: ignore[assignment]
                if not target:
                    raise DataFileError(path, line, "solution", "no closed \\boxed{...} answer")
            else:
                raise DataFileError(path, line, "answer", "missing (and no 'solution' either)")
            solution = rec.get("solution")
            answer = solution if isinstance(solution, str) else f"$\\boxed{{{target}}}$"
            out.append(
                Example(
                    id=f"math-{path.stem}-{line}",
                    prompt=problem + PROMPT_SUFFIX,
                    answer=answer,
                    data={"target": target},
                )
            )
        return out

    def verify(self, example: Example, response: str) -> bool:
        """Whether the response's last ``\\boxed{}`` is equivalent to the reference."""
        return self.verifier.equivalent(example.data["target"], last_boxed(response))

    def verify_many(self, pairs: Sequence[tuple[Example, str]]) -> list[bool]:
        """:meth:`verify` of many ``(example, response)`` pairs, checked in parallel."""
        return self.verifier.equivalent_many(
            [(ex.data["target"], last_boxed(text)) for ex, text in pairs]
        )


__all__ = ["MathTask", "MathVerifier", "MathVerifyMissing", "PROMPT_SUFFIX", "last_boxed"]
