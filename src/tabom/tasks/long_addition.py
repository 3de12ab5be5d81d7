"""Long addition (issue 19's third testbed, DESIGN §7): two ``digits``-digit numbers, the sum
written ``digits + 1`` digits wide, e.g. ``0123…+4567…=`` -> ``04690…``.

Each operand digit is drawn uniformly (leading zeros allowed, so every answer digit sits at a
fixed offset from the two digits it adds). A column whose two digits sum to 9 *propagates* a
carry: its answer digit depends on the columns below it, through every consecutive
propagating column. ``max_nines`` caps the propagating columns of a generated problem (0 = the
old domain of the ``configs/tiny_longadd*_pretrain.yaml`` recipes: every carry is decided by the column right below);
unrestricted, a 48-digit problem has about 4.8 of them. Difficulty is the count and the longest
run of propagating columns; the oracle order writes the answer units digit first.

The answer has ``digits + 1`` >= 48 tokens, decoded one per step, so ranking windows of
W = M >= 16 decode steps hold >= 120 ordered pairs (the paper's setting is W = 32 of 256).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tabom.tasks.addition import parse
from tabom.tasks.base import Example, draw_distinct


def nine_runs(a: str, b: str) -> tuple[int, int]:
    """``(count, longest run)`` of the columns of ``a + b`` (equal-length digit strings) whose
    digits sum to 9."""
    count = run = best = 0
    for s in (int(x) + int(y) for x, y in zip(a, b, strict=True)):
        run = run + 1 if s == 9 else 0
        count += s == 9
        best = max(best, run)
    return count, best


@dataclass
class LongAdditionTask:
    """``a+b=`` with ``digits``-digit operands written in full; answer ``digits + 1`` digits.

    Attributes:
        digits: digits of each operand (2 to 60; the answer has one more).
        max_nines: at most this many columns whose digits sum to 9 (carry-propagating
            columns); ``None`` = unrestricted. Columns past the cap are redrawn so that their
            sum is not 9 (the second operand's digit uniform over the other nine).
        zero: ``none``, or ``a`` / ``b``: that operand is all zeros, so the answer copies the
            other one (a pretraining aid: a single-input pattern that teaches the attention
            to the operand columns, which the sum alone, needing both digits at once, gives
            almost no gradient for).
        name: registry name.
        gen_length: ``digits + 2``: the answer plus one EOS.
    """

    digits: int = 48
    max_nines: int | None = None
    zero: str = "none"
    name: str = field(default="longadd", init=False)
    gen_length: int = field(init=False)

    def __post_init__(self) -> None:
        if not 2 <= self.digits <= 60:
            raise ValueError(f"longadd: digits must be in [2, 60], got {self.digits}")
        if self.max_nines is not None and not 0 <= self.max_nines <= self.digits:
            raise ValueError(
                f"longadd: max_nines must be in [0, digits] = [0, {self.digits}], "
                f"got {self.max_nines}"
            )
        if self.zero not in ("none", "a", "b"):
            raise ValueError(f"longadd: zero must be none, a or b, got {self.zero!r}")
        self.gen_length = self.digits + 2

    def _draw(self, generator: torch.Generator) -> Example:
        ab = torch.randint(0, 10, (2, self.digits), generator=generator)
        a, b = ab[0], ab[1]
        if self.zero != "none":
            (a if self.zero == "a" else b).zero_()
        if self.max_nines is not None:
            nines = torch.nonzero(a + b == 9).flatten()
            if len(nines) > self.max_nines:
                keep = torch.randperm(len(nines), generator=generator)[: self.max_nines]
                redraw = torch.ones(len(nines), dtype=torch.bool)
                redraw[keep] = False
                cols = nines[redraw]
                shift = torch.randint(1, 10, (len(cols),), generator=generator)
                b = b.clone()
                b[cols] = (9 - a[cols] + shift) % 10  # any digit but 9 - a
        sa = "".join(map(str, a.tolist()))
        sb = "".join(map(str, b.tolist()))
        answer = f"{int(sa) + int(sb):0{self.digits + 1}d}"
        return Example(
            id=f"longadd-{sa}+{sb}",
            prompt=f"{sa}+{sb}=",
            answer=answer,
            data={"a": sa, "b": sb},
        )

    def generate(self, n: int, generator: torch.Generator) -> list[Example]:
        """``n`` distinct problems drawn with ``generator``.

        Returns:
            Examples with ids ``longadd-{a}+{b}``, prompt ``{a}+{b}=`` (operands as
            ``digits``-digit strings), answer the zero-padded sum and
            ``data = {"a": a, "b": b}`` (strings).
        """
        return draw_distinct(n, lambda: self._draw(generator), what=self.name)

    def verify(self, example: Example, response: str) -> bool:
        """Whether ``response`` states ``a + b`` exactly (never raises)."""
        value = parse(response)
        return value is not None and value == int(example.data["a"]) + int(example.data["b"])

    def difficulty(self, example: Example) -> dict[str, int]:
        """``{"nines": count, "nine_run": longest run}`` of carry-propagating columns."""
        count, run = nine_runs(example.data["a"], example.data["b"])
        return {"nines": count, "nine_run": run}

    def oracle_rank(self, example: Example) -> list[int]:
        """Units-first rank of each of the ``gen_length`` response positions (-1 = EOS)."""
        n = self.digits + 1
        return [n - 1 - i for i in range(n)] + [-1] * (self.gen_length - n)
