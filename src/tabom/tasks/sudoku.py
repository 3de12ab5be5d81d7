"""4x4 Sudoku (DESIGN §7): ``1000/0002/4003/0000?`` -> ``1234/3412/4123/2341``.

A grid is written on one line as four rows of four digits separated by ``/``; ``0`` is a blank
in the prompt, which ends with ``?``. The verifier accepts any complete grid whose rows,
columns and 2x2 boxes each hold 1-4 once and that keeps every given of the puzzle, not only the
reference solution (puzzles with few givens have several). Dream's files
(``sudoku_4x4_{4..12}.jsonl``) write rows on separate lines; the number in their names is the
count of givens. Difficulty and the oracle order come from iterated naked singles
(:func:`propagate`): a blank whose row, column and box leave one candidate is filled, in
rounds, until no such cell is left (issue 12, "evaluation by difficulty").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import NamedTuple

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


CELL_POSITIONS: tuple[int, ...] = tuple(i + i // 4 for i in range(16))
"""Response position of each cell in ``format_grid`` text (``dddd/dddd/...``: a ``/`` after
every fourth cell)."""

_PEERS: tuple[frozenset[int], ...] = tuple(
    frozenset(j for unit in _UNITS if i in unit for j in unit if j != i) for i in range(16)
)


def candidates(grid: Grid, cell: int) -> set[int]:
    """Digits 1-4 that no filled peer (same row, column or 2x2 box) of ``cell`` holds."""
    return {1, 2, 3, 4} - {grid[j] for j in _PEERS[cell]}


def propagate(puzzle: Grid) -> tuple[Grid, list[int]]:
    """Iterated naked singles, in rounds, from the givens.

    Round r (r = 1, 2, ...) fills, all at once, every blank that has exactly one candidate in
    the grid left by round r − 1 (round 0 = the givens); it stops at the first round that
    fills nothing. A naked single is forced in every solution, so the fills never conflict
    on a solvable puzzle.

    Args:
        puzzle: 16 cells, 0 = blank.

    Returns:
        ``(grid, round_of)``: the grid after propagation (0 where still blank) and, per cell,
        the round that filled it: 0 for a given, r >= 1 for a propagated cell, -1 for a cell
        that propagation leaves blank.

    Raises:
        ValueError: ``puzzle`` is not 16 digits 0-4, or propagation meets a blank with no
            candidate (the puzzle has no solution).
    """
    if len(puzzle) != 16 or any(v not in (0, 1, 2, 3, 4) for v in puzzle):
        raise ValueError(f"sudoku: a puzzle is 16 digits 0-4, got {puzzle!r}")
    grid = list(puzzle)
    round_of = [0 if v else -1 for v in puzzle]
    r = 0
    while True:
        r += 1
        fills = {}
        for i in range(16):
            if grid[i]:
                continue
            cand = candidates(tuple(grid), i)
            if not cand:
                raise ValueError(f"sudoku: cell {i} of {format_grid(puzzle)} has no candidate")
            if len(cand) == 1:
                fills[i] = cand.pop()
        if not fills:
            return tuple(grid), round_of
        for i, v in fills.items():
            grid[i], round_of[i] = v, r


class Difficulty(NamedTuple):
    """How hard a puzzle is (:func:`difficulty`).

    Attributes:
        n_blanks: blank cells of the puzzle.
        n_unforced: blanks that iterated naked singles (:func:`propagate`) cannot fill from
            the givens (0 = solvable by naked singles alone; every real Dream file is).
        n_rounds: propagation rounds that filled something (the depth of the forced chain).
    """

    n_blanks: int
    n_unforced: int
    n_rounds: int


def difficulty(puzzle: Grid) -> Difficulty:
    """Blanks, cells no naked single fills, and propagation depth of ``puzzle``."""
    _, round_of = propagate(puzzle)
    return Difficulty(
        n_blanks=sum(v == 0 for v in puzzle),
        n_unforced=sum(r == -1 for r in round_of),
        n_rounds=max(round_of),
    )


def oracle_rank(puzzle: Grid) -> list[int]:
    """The constraint-propagation order as a rank per cell (lower = decode earlier).

    Givens get 0, a cell filled in propagation round r gets r, and every cell propagation
    leaves blank gets the last rank, 1 + the last round that filled anything.

    Args:
        puzzle: 16 cells, 0 = blank.

    Returns:
        16 ranks in row-major order (ties = the same round).
    """
    _, round_of = propagate(puzzle)
    last = max(round_of) + 1
    return [last if r == -1 else r for r in round_of]


def oracle_response_rank(puzzle: Grid, gen_length: int = 20) -> list[int]:
    """:func:`oracle_rank` laid out on the response positions of ``format_grid`` text.

    Cell c sits at position ``CELL_POSITIONS[c]``; the ``/`` separators and the EOS tail get
    -1 (not ranked: compare a decode order against this only where the rank is >= 0, and
    only where it is >= 1 to leave the copied givens out).

    Raises:
        ValueError: ``gen_length`` shorter than the 19-character grid.
    """
    if gen_length < 19:
        raise ValueError(f"sudoku: gen_length must be >= 19, got {gen_length}")
    out = [-1] * gen_length
    for cell, rank in enumerate(oracle_rank(puzzle)):
        out[CELL_POSITIONS[cell]] = rank
    return out


@dataclass
class SudokuTask:
    """4x4 Sudoku with ``n_blanks`` (to ``max_blanks``) blank cells in generated puzzles.

    Attributes:
        n_blanks: blanks per generated puzzle, in [0, 16] (Dream's files: 4 to 12); with
            ``max_blanks`` the fewest.
        max_blanks: when set, each puzzle draws its number of blanks uniformly from
            ``[n_blanks, max_blanks]`` (spec ``sudoku:n_blanks=4,max_blanks=8``); ``None`` =
            exactly ``n_blanks``.
        name: registry name.
        gen_length: 20 characters: the 19-character grid plus one EOS.
    """

    n_blanks: int = 8
    max_blanks: int | None = None
    name: str = field(default="sudoku", init=False)
    gen_length: int = field(default=20, init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.n_blanks <= 16:
            raise ValueError(f"sudoku: n_blanks must be in [0, 16], got {self.n_blanks}")
        if self.max_blanks is not None and not self.n_blanks <= self.max_blanks <= 16:
            raise ValueError(
                f"sudoku: max_blanks must be in [n_blanks, 16] = [{self.n_blanks}, 16], "
                f"got {self.max_blanks}"
            )

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
        n = self.n_blanks
        if self.max_blanks is not None and self.max_blanks > n:  # a fixed count draws nothing
            n = randint(n, self.max_blanks, generator)
        blanks = set(torch.randperm(16, generator=generator)[:n].tolist())
        puzzle = tuple(0 if i in blanks else v for i, v in enumerate(solution))
        return self._example("sudoku-" + "".join(map(str, puzzle)), puzzle, solution)

    def generate(self, n: int, generator: torch.Generator) -> list[Example]:
        """``n`` distinct puzzles: a uniformly drawn valid grid with ``n_blanks`` cells blanked
        (a count drawn from ``[n_blanks, max_blanks]`` when ``max_blanks`` is set).

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
        return grid is not None and is_solution(_puzzle(example), grid)

    def difficulty(self, example: Example) -> dict[str, int]:
        """:func:`difficulty` of the example's puzzle as a dict (``n_blanks``,
        ``n_unforced``, ``n_rounds``)."""
        return difficulty(_puzzle(example))._asdict()

    def oracle_rank(self, example: Example) -> list[int]:
        """:func:`oracle_response_rank` of the example's puzzle (``gen_length`` positions)."""
        return oracle_response_rank(_puzzle(example), self.gen_length)


REAL_DIR = Path(__file__).resolve().parent.parent / "assets" / "sudoku4x4"
"""Shipped copies of Dream's three hardest 4x4 files (``sudoku_4x4_{4,5,6}.jsonl``, Apache-2.0;
``assets/sudoku4x4/README.md``)."""
REAL_GIVENS = (4, 5, 6)


def real_puzzles() -> list[Example]:
    """The shipped real puzzles (4, 5 and 6 givens: 12, 11, 10 blanks), in file order."""
    task = SudokuTask()
    return [ex for g in REAL_GIVENS for ex in task.load(REAL_DIR / f"sudoku_4x4_{g}.jsonl")]


def _puzzle(example: Example) -> Grid:
    return tuple(int(ch) for ch in example.data["puzzle"])
