"""Tables and plots (DESIGN §8): the trajectory heat map of one decoded answer (DESIGN §3-4).

``plot_trajectory`` draws the response positions as a strip of cells (wrapped every ``wrap``
positions), each labelled with its token and coloured by the step at which the sampler
committed it, so an easy-to-hard order reads at a glance. matplotlib is an optional extra
(``pip install 'tabom[plot]'``) imported inside the function.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tabom.trajectory import TrajectoryRecord


def _token_label(text: str, limit: int = 5) -> str:
    """A short printable cell label: ``<eos>`` -> ``eos``, spaces shown as ``␣``."""
    if len(text) > 2 and text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    text = text.replace(" ", "␣").replace("\n", "⏎").replace("$", r"\$")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot_trajectory(
    record: TrajectoryRecord,
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    wrap: int = 32,
    dpi: int = 120,
) -> Path:
    """Draw one trajectory: answer tokens coloured by decode step, to a PNG file.

    Args:
        record: the trajectory to draw.
        path: the PNG to write (folders are created).
        labels: one label per response token (e.g. from the tokenizer); default: the ids.
        wrap: positions per row of cells.
        dpi: resolution of the PNG.

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: ``labels`` of the wrong length, or ``wrap < 1``.
    """
    try:
        import numpy as np
        from matplotlib import colormaps
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError(
            "drawing a trajectory needs matplotlib: pip install 'tabom[plot]' "
            "(or run `tabom inspect FILE --draw false` for the summary only)"
        ) from None
    steps = list(record.decoding_order)
    T = len(steps)
    if wrap < 1:
        raise ValueError(f"wrap must be >= 1, got {wrap}")
    labels = [str(t) for t in record.response_token_ids] if labels is None else list(labels)
    if len(labels) != T:
        raise ValueError(f"labels has {len(labels)} entries, the response has {T} tokens")

    # 1) the grid: rows of `wrap` cells; never-decoded (-1) and padding cells are masked
    cols = min(T, wrap)
    rows = -(-T // cols)
    grid = np.full((rows, cols), np.nan)
    for p, d in enumerate(steps):
        if d >= 0:
            grid[p // cols, p % cols] = d
    cmap = colormaps["viridis"].with_extremes(bad="#dddddd")
    top = max(max(steps), 1)

    # 2) the picture: cells, token and step labels, colour bar, title
    fig = Figure(figsize=(0.5 * cols + 2.0, 0.65 * rows + 1.3), dpi=dpi)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=top, aspect="auto")
    for p, (label, d) in enumerate(zip(labels, steps, strict=True)):
        r, c = divmod(p, cols)
        light = d >= 0 and d > 0.6 * top  # viridis is light at the top end
        color = "black" if d < 0 or light else "white"
        ax.text(c, r - 0.1, _token_label(label), ha="center", va="center", fontsize=9, color=color)
        ax.text(c, r + 0.3, str(d), ha="center", va="center", fontsize=6, color=color)
    ax.set_xticks(range(cols))
    ax.set_xticklabels([str(c) for c in range(cols)], fontsize=6)
    ax.set_yticks(range(rows))
    ax.set_yticklabels([str(r * cols) for r in range(rows)], fontsize=6)
    ax.set_xlabel("response position (row start on the left)", fontsize=7)
    bar = fig.colorbar(image, ax=ax, label="decode step", fraction=0.04, pad=0.02)
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    verdict = {True: "verified", False: "wrong", None: "unverified"}[record.verified]
    prompt = record.prompt if len(record.prompt) <= 60 else record.prompt[:57] + "..."
    ax.set_title(f"{record.id} ({record.method}, {verdict})\n{prompt!r}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


__all__ = ["plot_trajectory"]
