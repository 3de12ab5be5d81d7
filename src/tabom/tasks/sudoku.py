"""4x4 Sudoku (DESIGN §7): ``1000/0002/4003/0000?`` -> ``1234/3412/4123/2341``.

A grid is written on one line as four rows of four digits separated by ``/``; ``0`` is a blank
in the prompt, which ends with ``?``. The verifier accepts any complete grid whose rows,
columns and 2x2 boxes each hold 1-4 once and that keeps every given of the puzzle, not only the
reference solution (puzzles with few givens have several). Dream's files
(``sudoku_4x4_{4..12}.jsonl``) write rows on separate lines; the number in their names is the
count of givens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
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

Grid = tuple[int, ...]
"""16 cells in row-major order; 0 is a blank."""

_ROW = re.compile(r"[0-4]{4}")
_UNITS = (
    [[4 * r + c for c in range(4)] for r in range(4)]  # rows
    + [[4 * r + c for r in range(4)] for c in range(4)]  # columns
    + [
        [4 * (br + r) + bc + c for r in range(2) for c in range(2)]
        for br in (0, 2)
        for bc in (0, 2)
    ]
)


def format_grid(grid: Grid) -> str:
    """One-line form, e.g. ``1234/3412/4123/2341``."""
    cells = "".join(map(str, grid))
    return "/".join(cells[i : i + 4] for i in range(0, 16, 4))


def format_prompt(puzzle: Grid) -> str:
    """The prompt for a puzzle, e.g. ``1000/0002/4003/0000?``."""
    return format_grid(puzzle) + "?"


def parse(response: str) -> Grid | None:
    """The grid a response states, or ``None`` if it is not four rows of four digits 0-4.

    Args:
        response: model text (or a data file's grid). Rows are separated by ``/`` or by
            newlines; surrounding whitespace is ignored.

    Returns:
        The 16 cells in row-major order (0 = blank), or ``None``.
    """
    if len(response) > MAX_RESPONSE_CHARS:
        return None
    rows = re.split(r"/|\r?\n", response.strip())
    if len(rows) != 4 or not all(_ROW.fullmatch(row) for row in rows):
        return None
    return tuple(int(ch) for row in rows for ch in row)


def is_solution(puzzle: Grid, grid: Grid) -> bool:
    """Whether ``grid`` is a complete valid 4x4 sudoku that keeps every given of ``puzzle``."""
    if len(grid) != 16 or len(puzzle) != 16:
        return False
    if any(p != 0 and p != g for p, g in zip(puzzle, grid, strict=True)):
        return False
    return all(sorted(grid[i] for i in unit) == [1, 2, 3, 4] for unit in _UNITS)


@cache
def all_grids() -> tuple[Grid, ...]:
    """Every complete valid 4x4 sudoku (288 of them), in lexicographic order."""
    out: list[Grid] = []

    def fill(cells: list[int]) -> None:
        if len(cells) == 16:
            out.append(tuple(cells))
            return
        i = len(cells)
        for d in range(1, 5):
            peers = [j for unit in _UNITS if i in unit for j in unit if j < i]
            if all(cells[j] != d for j in peers):
                fill([*cells, d])

    fill([])
    return tuple(out)


@dataclass
class SudokuTask:
    """4x4 Sudoku with ``n_blanks`` blank cells in generated puzzles.

    Attributes:
        n_blanks: blanks per generated puzzle, in [0, 16] (Dream's files: 4 to 12).
        name: registry name.
        gen_length: 20 characters: the 19-character grid plus one EOS.
    """

    n_blanks: int = 8
    name: str = field(default="sudoku", init=False)
    gen_length: int = field(default=20, init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.n_blanks <= 16:
            raise ValueError(f"sudoku: n_blanks must be in [0, 16], got {self.n_blanks}")

    @staticmethod
    def _example(id: str, puzzle: Grid, solution: Grid) -> Example:
        return Example(
            id=id,
            prompt=format_prompt(puzzle),
            answer=format_grid(solution),
            data={"puzzle": "".join(map(str, puzzle))},
        )

    def _draw(self, generator: torch.Generator) -> Example:
        grids = all_grids()
        solution = grids[randint(0, len(grids) - 1, generator)]
        blanks = set(torch.randperm(16, generator=generator)[: self.n_blanks].tolist())
        puzzle = tuple(0 if i in blanks else v for i, v in enumerate(solution))
        return self._example("sudoku-" + "".join(map(str, puzzle)), puzzle, solution)

    def generate(self, n: int, generator: torch.Generator) -> list[Example]:
        """``n`` distinct puzzles: a uniformly drawn valid grid with ``n_blanks`` cells blanked.

        Args:
            n: number of instances.
            generator: the only source of randomness (same state, same list).

        Returns:
            Examples with ids ``sudoku-{16 puzzle digits}``, answer the grid the puzzle was cut
            from (one solution of possibly several) and ``data = {"puzzle": "1000..."}``.
        """
        return draw_distinct(n, lambda: self._draw(generator), what=self.name)

    def load(self, path: str | Path) -> list[Example]:
        """Read a Dream-format file (``input`` puzzle and ``output`` solution, rows on lines).

        Args:
            path: a JSONL file such as ``sudoku_4x4_8.jsonl``.

        Returns:
            Examples with ids ``sudoku-{file stem}-{line}``.

        Raises:
            DataFileError: a missing or non-string field, a grid that is not 4 rows of 4
                digits 0-4, or an ``output`` that does not solve its ``input``.
        """
        path = Path(path)
        out = []
        for line, rec in read_jsonl(path):
            puzzle = parse(require_str(path, line, rec, "input"))
            if puzzle is None:
                raise DataFileError(path, line, "input", "not 4 rows of 4 digits 0-4")
            solution = parse(require_str(path, line, rec, "output"))
            if solution is None:
                raise DataFileError(path, line, "output", "not 4 rows of 4 digits 0-4")
            if not is_solution(puzzle, solution):
                raise DataFileError(path, line, "output", "not a valid solution of the input")
            out.append(self._example(f"sudoku-{path.stem}-{line}", puzzle, solution))
        return out

    def verify(self, example: Example, response: str) -> bool:
        """Whether ``response`` is a valid grid keeping the puzzle's givens (never raises)."""
        grid = parse(response)
        puzzle = tuple(int(ch) for ch in example.data["puzzle"])
        return grid is not None and is_solution(puzzle, grid)
