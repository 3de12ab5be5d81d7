"""Countdown with n operands (DESIGN §7): ``15,44,79>50:`` -> ``44-15=29,79-29=50``.

The prompt lists the operands, then ``>`` and the target. The answer is Dream's format: equations
``a op b=c`` (op one of ``+ - * /``) separated by commas. The rules are Dream's evaluation:
every equation is arithmetically true, every operand is used exactly once, every intermediate
result is used exactly once by a later equation, and the last result is the target.

The verifier parses the text and checks it with exact integer arithmetic; it never evaluates
it. All numbers are unsigned decimal integers, so every intermediate is a nonnegative integer:
``a-b=c`` needs ``a >= b`` and ``a/b=c`` needs ``b != 0`` and ``a == b*c`` (exact division,
``7/2=3`` and ``5/0=0`` are false). All 3,000 reference solutions of Dream's cd3/cd4/cd5 files
follow these rules. :func:`solve` searches the same space exhaustively; the generator keeps an
instance only when it finds a solution, and uses that solution as the reference answer.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tabom.tasks.base import (
    MAX_RESPONSE_CHARS,
    DataFileError,
    Example,
    draw_distinct,
    randint,
    read_jsonl,
    require_str,
)

Equation = tuple[int, str, int, int]
"""``(a, op, b, c)`` for the equation ``a op b=c``."""

_EQUATION = re.compile(r"\s*([0-9]{1,12})\s*([-+*/])\s*([0-9]{1,12})\s*=\s*([0-9]{1,24})\s*")


def format_prompt(operands: list[int], target: int) -> str:
    """The prompt for an instance, e.g. ``15,44,79>50:``."""
    return ",".join(map(str, operands)) + f">{target}:"


def format_equations(equations: list[Equation]) -> str:
    """Dream's answer format, e.g. ``44-15=29,79-29=50``."""
    return ",".join(f"{a}{op}{b}={c}" for a, op, b, c in equations)


def parse(response: str) -> list[Equation] | None:
    """The equations a response states, or ``None`` if it is not in the answer format.

    Args:
        response: model text, already cut at EOS. Whitespace around numbers, operators,
            ``=`` and commas is allowed; anything else (negative numbers, decimals, brackets,
            a trailing comma, an empty string) makes the response unparseable.

    Returns:
        The equations in order, each as ``(a, op, b, c)``, or ``None``.
    """
    if len(response) > MAX_RESPONSE_CHARS:
        return None
    out: list[Equation] = []
    for part in response.split(","):
        m = _EQUATION.fullmatch(part)
        if m is None:
            return None
        out.append((int(m[1]), m[2], int(m[3]), int(m[4])))
    return out


def holds(a: int, op: str, b: int, c: int) -> bool:
    """Whether ``a op b = c`` is true over the integers (division must be exact, ``b != 0``)."""
    if op == "+":
        return a + b == c
    if op == "-":
        return a - b == c
    if op == "*":
        return a * b == c
    if op == "/":
        return b != 0 and a == b * c
    return False


def check(operands: list[int], target: int, equations: list[Equation]) -> bool:
    """Whether ``equations`` solve the instance under the rules in the module docstring.

    A pool starts as the multiset of operands; each equation must be true and take its two
    inputs out of the pool and put its result in. Operands and intermediates with equal values
    are interchangeable, so this is exactly "each operand and each intermediate used once".

    Args:
        operands: the instance's operands (repeats allowed).
        target: the number to reach.
        equations: parsed equations, as from :func:`parse`.

    Returns:
        ``True`` when there are ``len(operands) - 1`` true equations that use up the pool and
        the last one's result is ``target``.
    """
    if len(equations) != len(operands) - 1 or not equations:
        return False
    pool = Counter(operands)
    for a, op, b, c in equations:
        if not holds(a, op, b, c):
            return False
        for v in (a, b):
            if pool[v] == 0:
                return False
            pool[v] -= 1
        pool[c] += 1
    return equations[-1][3] == target and +pool == Counter([target])


def _moves(a: int, b: int) -> list[Equation]:
    """Every legal equation on the pair ``{a, b}``, larger number first for ``-`` and ``/``."""
    hi, lo = max(a, b), min(a, b)
    moves = [(a, "+", b, a + b), (hi, "-", lo, hi - lo), (a, "*", b, a * b)]
    if lo != 0 and hi % lo == 0:
        moves.append((hi, "/", lo, hi // lo))
    return moves


def solve(operands: list[int], target: int, *, max_chars: int | None = None) -> str | None:
    """An exhaustive search for a solution in the answer format.

    Args:
        operands: the instance's operands (at least 2).
        target: the number to reach.
        max_chars: if given, only solutions whose answer string has at most this many
            characters count.

    Returns:
        A solution such as ``44-15=29,79-29=50`` that :func:`check` accepts, or ``None`` if
        there is none (within ``max_chars``).
    """
    budget = 10**9 if max_chars is None else max_chars
    dead: set[tuple[tuple[int, ...], int]] = set()  # (sorted pool, chars left) known to fail

    def search(pool: list[int], left: int) -> list[Equation] | None:
        if len(pool) == 1:
            return [] if pool[0] == target else None
        key = (tuple(sorted(pool)), left)
        if key in dead:
            return None
        for i in range(len(pool)):
            for j in range(i + 1, len(pool)):
                rest = pool[:i] + pool[i + 1 : j] + pool[j + 1 :]
                for eq in _moves(pool[i], pool[j]):
                    # the equation plus its separating comma (none after the last one)
                    cost = len(format_equations([eq])) + (1 if rest else 0)
                    if cost > left:
                        continue
                    tail = search([*rest, eq[3]], left - cost)
                    if tail is not None:
                        return [eq, *tail]
        dead.add(key)
        return None

    if len(operands) < 2:
        raise ValueError(f"countdown: need at least 2 operands, got {operands}")
    found = search(list(operands), budget)
    return None if found is None else format_equations(found)


@dataclass
class CountdownTask:
    """Countdown with ``n_operands`` operands; generated instances match Dream's cd files.

    Attributes:
        n_operands: operands per instance (Dream's files: 3, 4, 5).
        operand_min: smallest operand (Dream's files: 1).
        operand_max: largest operand (Dream's files: 99).
        target_min: smallest target (Dream's targets are two-digit numbers).
        target_max: largest target.
        name: registry name.
        gen_length: ``12 * (n_operands - 1) + 4`` characters (24/36/48 fit the longest
            reference of cd3/cd4/cd5, 21/34/47, plus EOS); generated answers are kept shorter
            than this, loaded ones are checked against it.
    """

    n_operands: int = 3
    operand_min: int = 1
    operand_max: int = 99
    target_min: int = 10
    target_max: int = 99
    name: str = field(default="countdown", init=False)
    gen_length: int = field(init=False)

    def __post_init__(self) -> None:
        if not 2 <= self.n_operands <= 6:
            raise ValueError(f"countdown: n_operands must be in [2, 6], got {self.n_operands}")
        if not 0 <= self.operand_min <= self.operand_max:
            raise ValueError(
                f"countdown: need 0 <= operand_min <= operand_max, got {self.operand_min}, "
                f"{self.operand_max}"
            )
        if not 0 <= self.target_min <= self.target_max:
            raise ValueError(
                f"countdown: need 0 <= target_min <= target_max, got {self.target_min}, "
                f"{self.target_max}"
            )
        self.gen_length = 12 * (self.n_operands - 1) + 4

    def _draw(self, generator: torch.Generator) -> Example | None:
        operands = [
            randint(self.operand_min, self.operand_max, generator) for _ in range(self.n_operands)
        ]
        target = randint(self.target_min, self.target_max, generator)
        answer = solve(operands, target, max_chars=self.gen_length - 1)
        if answer is None:
            return None
        return Example(
            id="countdown-" + ",".join(map(str, [*operands, target])),
            prompt=format_prompt(operands, target),
            answer=answer,
            data={"operands": operands, "target": target},
        )

    def generate(self, n: int, generator: torch.Generator) -> list[Example]:
        """``n`` distinct solvable instances drawn with ``generator``.

        Operands and target are drawn uniformly from their ranges; an instance is kept only
        when :func:`solve` finds a solution that fits ``gen_length - 1`` characters.

        Args:
            n: number of instances.
            generator: the only source of randomness (same state, same list).

        Returns:
            Examples with ids ``countdown-{operands},{target}``, answer the solver's solution
            and ``data = {"operands": [...], "target": t}``.
        """
        return draw_distinct(n, lambda: self._draw(generator), what=self.name)

    def load(self, path: str | Path) -> list[Example]:
        """Read a Dream-format file (``input`` = operands then target, ``output`` = solution).

        Args:
            path: a JSONL file such as ``cd3_test.jsonl``.

        Returns:
            Examples with ids ``countdown-{file stem}-{line}``.

        Raises:
            DataFileError: a missing or non-string field, an ``input`` whose numbers do not
                parse or whose operand count is not ``n_operands``, or an ``output`` that is
                not a valid solution or does not fit ``gen_length``.
        """
        path = Path(path)
        out = []
        for line, rec in read_jsonl(path):
            text = require_str(path, line, rec, "input")
            parts = text.split(",")
            if not all(re.fullmatch(r"[0-9]{1,12}", p.strip()) for p in parts):
                raise DataFileError(path, line, "input", f"not comma-separated integers: {text!r}")
            numbers = [int(p) for p in parts]
            operands, target = numbers[:-1], numbers[-1]
            if len(operands) != self.n_operands:
                raise DataFileError(
                    path,
                    line,
                    "input",
                    f"{len(operands)} operands, the task has n_operands={self.n_operands} "
                    f"(use countdown:n_operands={len(operands)})",
                )
            answer = require_str(path, line, rec, "output")
            equations = parse(answer)
            if equations is None or not check(operands, target, equations):
                raise DataFileError(path, line, "output", f"not a valid solution: {answer!r}")
            if len(answer) >= self.gen_length:
                raise DataFileError(
                    path, line, "output", f"{len(answer)} chars, gen_length is {self.gen_length}"
                )
            out.append(
                Example(
                    id=f"countdown-{path.stem}-{line}",
                    prompt=format_prompt(operands, target),
                    answer=answer,
                    data={"operands": operands, "target": target},
                )
            )
        return out

    def verify(self, example: Example, response: str) -> bool:
        """Whether ``response`` solves ``example`` (parsed, never evaluated; never raises)."""
        equations = parse(response)
        return equations is not None and check(
            example.data["operands"], example.data["target"], equations
        )
