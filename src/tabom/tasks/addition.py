"""Multi-digit addition (DESIGN §7): ``123+4567=`` -> ``4690``.

Each operand gets a digit count drawn uniformly from ``[min_digits, max_digits]``, then a value
drawn uniformly among the numbers with that many digits. The verifier accepts a plain ASCII
decimal integer equal to the sum (surrounding whitespace ignored) and nothing else.
Difficulty is the longest carry chain (:func:`longest_carry_chain`); the oracle order writes
the answer from the units digit up (:func:`oracle_rank`), the order column addition needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from tabom.tasks.base import Example, draw_distinct, randint

_INT = re.compile(r"[0-9]+")
_MAX_ANSWER_DIGITS = 64  # longer strings are wrong without converting them to int


def format_prompt(a: int, b: int, width: int = 0) -> str:
    """The prompt for ``a + b``, e.g. ``123+4567=``; with ``width`` 4, ``0123+4567=``."""
    return f"{a:0{width}d}+{b:0{width}d}=" if width else f"{a}+{b}="


def parse(response: str) -> int | None:
    """The integer a response states, or ``None`` if it is not a plain decimal integer.

    Args:
        response: model text, already cut at EOS.

    Returns:
        The value of ``response.strip()`` when it is 1 to 64 ASCII digits, else ``None``.
    """
    text = response.strip()
    if len(text) > _MAX_ANSWER_DIGITS or not _INT.fullmatch(text):
        return None
    return int(text)


def longest_carry_chain(a: int, b: int) -> int:
    """The most consecutive columns of ``a + b`` (units first) that each produce a carry.

    E.g. 0 for 12+34, 1 for 15+15 (units only), 3 for 999+1 (every column carries). A
    chain of length c means the digit c columns up depends on the units column.

    Raises:
        ValueError: a negative operand.
    """
    if a < 0 or b < 0:
        raise ValueError(f"addition: operands must be >= 0, got {a} and {b}")
    carry = run = best = 0
    while a or b:
        carry = int(a % 10 + b % 10 + carry >= 10)
        run = run + 1 if carry else 0
        best = max(best, run)
        a, b = a // 10, b // 10
    return best


def answer_text(a: int, b: int, width: int = 0) -> str:
    """The reference answer: the sum, zero-padded to ``width + 1`` digits when ``width``."""
    return f"{a + b:0{width + 1}d}" if width else str(a + b)


def oracle_rank(a: int, b: int, width: int = 0, gen_length: int | None = None) -> list[int]:
    """The oracle decode order of the reference answer: units digit first (right to left).

    Args:
        a, b: the operands.
        width: the task's ``width`` (the answer has ``width + 1`` digits when > 0).
        gen_length: response length; positions after the answer (the EOS tail) get -1.

    Returns:
        One rank per response position: the last digit 0, the one before it 1, ...; -1
        on the EOS tail (not ranked).

    Raises:
        ValueError: ``gen_length`` shorter than the answer.
    """
    n = len(answer_text(a, b, width))
    gen_length = n if gen_length is None else gen_length
    if gen_length < n:
        raise ValueError(f"addition: gen_length {gen_length} < answer length {n}")
    return [n - 1 - i for i in range(n)] + [-1] * (gen_length - n)


@dataclass
class AdditionTask:
    """``a+b=`` with operands of ``min_digits`` to ``max_digits`` digits each.

    Attributes:
        min_digits: fewest digits of an operand (``>= 1``; 1-digit operands include 0).
        max_digits: most digits of an operand (``<= 18``).
        name: registry name.
        width: when > 0, operands are written zero-padded to ``width`` digits and the reference
            answer to ``width + 1`` digits (``0012+0345=`` -> ``00357``): every digit of the
            answer then sits at a fixed offset from the digits it depends on. The verifier
            compares values, so ``357`` is right too.
        gen_length: the longest sum (``max(max_digits, width) + 1`` digits) plus one EOS.
    """

    min_digits: int = 1
    max_digits: int = 4
    width: int = 0
    name: str = field(default="addition", init=False)
    gen_length: int = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(
                f"addition: need 1 <= min_digits <= max_digits, got min_digits={self.min_digits}, "
                f"max_digits={self.max_digits}"
            )
        if self.max_digits > 18:  # torch.randint draws int64
            raise ValueError(f"addition: max_digits must be <= 18, got {self.max_digits}")
        if self.width and self.width < self.max_digits:
            raise ValueError(
                f"addition: width ({self.width}) must be 0 or >= max_digits ({self.max_digits})"
            )
        self.gen_length = max(self.max_digits, self.width) + 2

    def _operand(self, generator: torch.Generator) -> int:
        digits = randint(self.min_digits, self.max_digits, generator)
        low = 0 if digits == 1 else 10 ** (digits - 1)
        return randint(low, 10**digits - 1, generator)

    def _draw(self, generator: torch.Generator) -> Example:
        a, b = self._operand(generator), self._operand(generator)
        return Example(
            id=f"addition-{a}+{b}" + (f"-w{self.width}" if self.width else ""),
            prompt=format_prompt(a, b, self.width),
            answer=answer_text(a, b, self.width),
            data={"a": a, "b": b},
        )

    def generate(self, n: int, generator: torch.Generator) -> list[Example]:
        """``n`` distinct sums drawn with ``generator``.

        Args:
            n: number of instances.
            generator: the only source of randomness (same state, same list).

        Returns:
            Examples with ids ``addition-{a}+{b}``, prompt ``{a}+{b}=``, answer the sum and
            ``data = {"a": a, "b": b}``.

        Raises:
            ValueError: fewer than ``n`` distinct instances exist for these digit counts.
        """
        return draw_distinct(n, lambda: self._draw(generator), what=self.name)

    def verify(self, example: Example, response: str) -> bool:
        """Whether ``response`` states ``a + b`` exactly (never raises)."""
        value = parse(response)
        return value is not None and value == example.data["a"] + example.data["b"]

    def difficulty(self, example: Example) -> dict[str, int]:
        """``{"carry_chain": c}``, the longest carry chain of the example's sum."""
        return {"carry_chain": longest_carry_chain(example.data["a"], example.data["b"])}

    def oracle_rank(self, example: Example) -> list[int]:
        """Units-first rank of each of the ``gen_length`` response positions (-1 = EOS tail)."""
        d = example.data
        return oracle_rank(d["a"], d["b"], self.width, self.gen_length)
