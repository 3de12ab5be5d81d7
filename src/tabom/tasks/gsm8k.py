"""GSM8K loader and answer check, for real models (DESIGN §7).

The prompt is the question, the reference answer the full worked solution, whose final answer
follows ``#### ``. A response's answer is the number after its last ``####``, or failing a
``####`` its last number; answers are compared as exact fractions, so ``18.0`` equals ``18``
and ``$1,000`` equals ``1000``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from tabom.tasks.base import (
    MAX_RESPONSE_CHARS,
    DataFileError,
    Example,
    FileTask,
    read_jsonl,
    require_str,
)

# a minus sign only where it cannot be a binary minus ("5-3" ends in 3, not -3); commas only
# in groups of three ("1,000"; "1, 2" is two numbers); a trailing period is not a decimal point
_NUMBER = re.compile(r"(?:(?<![\w)])-)?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")
_AFTER_MARK = re.compile(r"[\s$:=*]*(" + _NUMBER.pattern + ")")
_MAX_NUMBER_CHARS = 64  # longer literals are not answers (and int() refuses > 4300 digits)


def extract_answer(text: str) -> str | None:
    """The final answer a text states, commas removed, e.g. ``"-1234.5"``.

    Args:
        text: a model response or a reference solution.

    Returns:
        The number right after the last ``####`` (``$``, spaces and ``:`` skipped) if the text
        has a ``####``, else the last number in the text; ``None`` when there is none (or the
        text or the number is absurdly long).
    """
    if len(text) > MAX_RESPONSE_CHARS:
        return None
    if "####" in text:
        m = _AFTER_MARK.match(text, text.rindex("####") + 4)
        number = m[1] if m else None
    else:
        found = _NUMBER.findall(text)
        number = found[-1] if found else None
    if number is None or len(number) > _MAX_NUMBER_CHARS:
        return None
    return number.replace(",", "")


def parse(response: str) -> Fraction | None:
    """The value of :func:`extract_answer`, as an exact fraction, or ``None``."""
    number = extract_answer(response)
    return None if number is None else Fraction(number)


@dataclass
class GSM8KTask(FileTask):
    """GSM8K from its JSONL files (``question``, ``answer``).

    Attributes:
        path: the JSONL file :meth:`generate` samples from (``None``: only :meth:`load` and
            :meth:`verify` work).
        gen_length: response length in tokens of the real model's tokenizer.
        name: registry name.
    """

    path: str | None = None
    gen_length: int = 256
    name: str = field(default="gsm8k", init=False)
    _examples: list[Example] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.gen_length < 1:
            raise ValueError(f"gsm8k: gen_length must be >= 1, got {self.gen_length}")

    def load(self, path: str | Path) -> list[Example]:
        """Read a GSM8K JSONL file.

        Args:
            path: e.g. ``gsm8k/test.jsonl``.

        Returns:
            Examples with ids ``gsm8k-{file stem}-{line}``, prompt the question, answer the
            full reference solution and ``data = {"target": final answer, commas removed}``.

        Raises:
            DataFileError: a missing or non-string field, or an ``answer`` without ``#### ``
                followed by a number.
        """
        path = Path(path)
        out = []
        for line, rec in read_jsonl(path):
            question = require_str(path, line, rec, "question")
            answer = require_str(path, line, rec, "answer")
            if "#### " not in answer:
                raise DataFileError(path, line, "answer", "no final answer after '#### '")
            target = extract_answer(answer)
            if target is None:
                raise DataFileError(path, line, "answer", "no number after the last '#### '")
            out.append(
                Example(
                    id=f"gsm8k-{path.stem}-{line}",
                    prompt=question,
                    answer=answer,
                    data={"target": target},
                )
            )
        return out

    def verify(self, example: Example, response: str) -> bool:
        """Whether the response's final answer equals the reference numerically (never raises)."""
        value = parse(response)
        return value is not None and value == Fraction(example.data["target"])
