"""Tables and plots (DESIGN §8): the trajectory heat map of one decoded answer (DESIGN §3-4)
and the comparison plots of ``tabom demo`` (DESIGN §7).

``plot_trajectory`` draws the response positions as a strip of cells (wrapped every ``wrap``
positions), each labelled with its token and coloured by the step at which the sampler
committed it, so an easy-to-hard order reads at a glance. ``plot_metric_bars`` (a metric per
model, mean ± std over seeds), ``plot_budgets`` (accuracy against tokens per step) and
``plot_entropy_curves`` (entropy against decode step) draw the demo's comparison.
matplotlib is an optional extra (``pip install 'tabom[plot]'``) imported inside each function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tabom.trajectory import TrajectoryRecord, tokenizer_fingerprint


def _token_label(text: str, limit: int = 5) -> str:
    """A short printable cell label: ``<eos>`` -> ``eos``, spaces shown as ``␣``."""
    if len(text) > 2 and text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    text = text.replace(" ", "␣").replace("\n", "⏎").replace("$", r"\$")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def token_labels(record: TrajectoryRecord, tokenizer: str | None) -> tuple[list[str] | None, str]:
    """Labels for the record's tokens from a matching tokenizer, and where they came from.

    Only a tokenizer the user names (``tokenizer``) or a shipped model's is loaded: a path
    or hub id written inside the file (``gen.model``) is not opened uninvited.

    Returns:
        ``(labels, note)``; ``labels`` is ``None`` (draw ids) when no tokenizer is named, it
        cannot be loaded or its fingerprint differs from the file's ``gen.tokenizer``.
    """
    from transformers import AutoTokenizer

    from tabom.models import SHIPPED, resolve_model_path

    name = tokenizer
    if name is None:
        name = str(record.gen.get("model", ""))
        if name not in SHIPPED:
            return None, (
                f"token ids shown: the file's model {name!r} is not loaded uninvited; "
                "--tokenizer MODEL labels the tokens"
            )
    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(name))
    except (OSError, ValueError) as e:  # FileNotFoundError is an OSError
        return None, f"token ids shown: tokenizer of {name!r} not available ({e})"
    if tokenizer_fingerprint(tok) != record.gen.get("tokenizer"):
        return None, f"token ids shown: the tokenizer of {name!r} is not the file's"
    return tok.convert_ids_to_tokens(record.response_token_ids), f"tokens from {name!r}"


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
    fig = _figure(
        0.5 * cols + 2.0,
        0.65 * rows + 1.3,
        dpi,
        hint="(or run `tabom inspect FILE --draw false` for the summary only)",
    )
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    grid = np.full((rows, cols), np.nan)
    for p, d in enumerate(steps):
        if d >= 0:
            grid[p // cols, p % cols] = d
    cmap = colormaps["viridis"].with_extremes(bad="#dddddd")
    top = max(max(steps), 1)

    # 2) the picture: cells, token and step labels, colour bar, title
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
    ax.set_yticks(range(rows) if rows > 1 else [])  # one row: no row-start tick to read
    ax.set_yticklabels([str(r * cols) for r in range(rows)] if rows > 1 else [], fontsize=6)
    ax.set_xlabel(
        "response position" + (" (row start on the left)" if rows > 1 else ""), fontsize=7
    )
    bar = fig.colorbar(image, ax=ax, label="decode step", fraction=0.04, pad=0.02)
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    verdict = {True: "verified", False: "wrong", None: "unverified"}[record.verified]
    prompt = record.prompt if len(record.prompt) <= 60 else record.prompt[:57] + "..."
    model = record.gen.get("model", "?")
    ax.set_title(
        f"{record.id} ({record.method}, {verdict}; model {model})\n{prompt!r}", fontsize=8
    )
    return _save(fig, path)


MeanStd = tuple[float, float]
"""``(mean, std)`` of a metric over seeds (std 0 for a single run)."""


def _figure(width: float, height: float, dpi: int, *, hint: str = ""):
    """A matplotlib Figure; ImportError (ending with ``hint``) when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        msg = "plotting needs matplotlib: pip install 'tabom[plot]'"
        raise ImportError(f"{msg} {hint}".rstrip()) from None
    return Figure(figsize=(width, height), dpi=dpi)


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    if path.suffix.lower() != ".png":  # what savefig would write, so the caller names it
        path = path.with_name(path.name + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _palette(n: int) -> list:
    """One colour per model, all distinct: matplotlib's cycle ``C0``..``C9`` up to 10 models,
    ``tab20`` up to 20, evenly spaced ``turbo`` beyond (the cycle repeats after 10, so the
    full protocol's 11th arm would share the base model's colour). Every plot that colours
    models calls this, so a model's colour matches across the report's figures."""
    if n <= 10:
        return [f"C{j}" for j in range(n)]
    from matplotlib import colormaps

    if n <= 20:
        return [colormaps["tab20"](j) for j in range(n)]
    return [colormaps["turbo"](j / (n - 1)) for j in range(n)]


def plot_metric_bars(
    panels: Mapping[str, Mapping[str, MeanStd]],
    path: str | Path,
    *,
    title: str = "",
    ylabels: Mapping[str, str] | None = None,
    sharey: bool = False,
    dpi: int = 120,
) -> Path:
    """One bar panel per metric: a bar per model with its mean and a ± std error bar.

    Each value is written above the top of its error bar (never on it).

    Args:
        panels: ``{metric title: {model: (mean, std)}}``; models in display order.
        path: the PNG to write.
        title: figure title.
        ylabels: ``{metric title: y-axis label}`` (default: the metric title's first word
            group, e.g. ``accuracy``).
        sharey: one y range for every panel (metrics of one scale, e.g. accuracies).
        dpi: resolution.

    Returns:
        The path written.
    """
    n_bars = max((len(v) for v in panels.values()), default=1)
    # wider panels past 8 bars (the full protocol has 14 arms), so names and values keep apart
    fig = _figure(max(3.4, 0.32 * n_bars + 0.8) * len(panels) + 0.6, 3.6, dpi)
    shared = max(
        (m + s for values in panels.values() for m, s in values.values()), default=1e-3
    )
    for i, (metric, values) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        names = list(values)
        means = [values[n][0] for n in names]
        stds = [values[n][1] for n in names]
        crowded = len(names) > 8  # upright numbers of neighbouring bars overlap: turn them
        ax.bar(range(len(names)), means, yerr=stds, color=_palette(len(names)), capsize=3)
        tops = [m + s for m, s in zip(means, stds, strict=True)]
        ymax = max(1e-3, shared if sharey else max(tops)) * 1.22
        for j, (m, top) in enumerate(zip(means, tops, strict=True)):
            # above the error bar's cap, so the number never sits on the bar
            ax.text(
                j,
                top + 0.02 * ymax,
                f"{m:.3f}",
                ha="center",
                va="bottom",
                fontsize=6 if crowded else 7,
                rotation=90 if crowded else 0,
            )
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.set_ylabel((ylabels or {}).get(metric, metric.split(" (")[0]), fontsize=8)
        ax.set_ylim(0, ymax)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_budgets(
    curves: Mapping[str, Mapping[int, MeanStd]],
    path: str | Path,
    *,
    title: str = "accuracy against step budget",
    dpi: int = 120,
) -> Path:
    """Accuracy against tokens committed per forward, one line (± std) per model.

    Args:
        curves: ``{model: {tokens_per_step: (mean, std)}}``.
        path: the PNG to write.
        title: axes title.
        dpi: resolution.

    Returns:
        The path written.
    """
    fig = _figure(6.8, 3.8, dpi)
    ax = fig.add_subplot()
    for color, (name, points) in zip(_palette(len(curves)), curves.items(), strict=True):
        xs = sorted(points)
        ax.errorbar(
            xs,
            [points[x][0] for x in xs],
            yerr=[points[x][1] for x in xs],
            marker="o",
            capsize=3,
            color=color,
            label=name,
        )
        ax.set_xticks(xs)
    ax.set_xlabel("tokens committed per forward (1 = full diffusion decoding)", fontsize=8)
    ax.set_ylabel("greedy accuracy")
    ax.set_title(title, fontsize=9)
    # outside the axes: the legend never covers a curve or an error bar
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)


def plot_entropy_curves(
    curves: Mapping[str, Sequence[float | MeanStd]],
    path: str | Path,
    *,
    ylabel: str = "entropy of the next-decoded token (nats)",
    title: str = "",
    note: str = "",
    dpi: int = 120,
) -> Path:
    """A per-decode-step curve (e.g. entropy of the token committed next) for each model.

    Args:
        curves: ``{model: [value at decode step s]}``, each a number or ``(mean, std)``
            (drawn with a ± std error bar); NaN values are left out.
        path: the PNG to write.
        ylabel: y-axis label.
        title: axes title.
        note: a line under the axes saying what is averaged (and what step 0 is).
        dpi: resolution.

    Returns:
        The path written.
    """
    fig = _figure(6.4, 4.4 if note else 3.8, dpi)
    ax = fig.add_subplot()
    for color, (name, ys) in zip(_palette(len(curves)), curves.items(), strict=True):
        pts = [(s, y if isinstance(y, tuple) else (y, 0.0)) for s, y in enumerate(ys)]
        pts = [(s, m, sd) for s, (m, sd) in pts if m == m]  # m == m drops NaN
        ax.errorbar(
            [p[0] for p in pts],
            [p[1] for p in pts],
            yerr=[p[2] for p in pts],
            marker="o",
            capsize=3,
            color=color,
            label=name,
        )
    import textwrap

    xlabel = "decode step s (the state before step s; s = 0: every position masked)"
    if note:  # under the axis label, inside the layout (tight_layout keeps it on the page)
        xlabel += "\n\n" + textwrap.fill(note, 105)
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_ylim(bottom=0)  # an entropy is >= 0: the axis starts there
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)


__all__ = [
    "token_labels",
    "plot_budgets",
    "plot_entropy_curves",
    "plot_metric_bars",
    "plot_trajectory",
]
