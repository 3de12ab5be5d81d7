"""``tabom inspect FILE``: summarise a trajectory file and draw one trajectory (DESIGN §4, §8).

The summary counts records, prompts and samples, the verified share, the steps each answer
took (last decode step + 1) and the tokens committed per step; the picture
(:func:`tabom.plots.plot_trajectory`) shows one answer's tokens coloured by decode step.
Token labels come from the tokenizer the user names (``--tokenizer``; by default the record's
``gen.model`` only when it is a shipped model: a path or hub id named inside a file is never
opened uninvited) when it matches the file's tokenizer fingerprint, else the ids are shown
(and the command says so).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabom.config import AT_LEAST_1, NON_NEGATIVE, check_ranges
from tabom.errors import TabomError
from tabom.trajectory import TrajectoryRecord, read_trajectories


@dataclass
class InspectConfig:
    """Config of ``tabom inspect`` (``tabom inspect FILE`` sets ``path``).

    Attributes:
        path: the trajectory file.
        index: position (0-based) of the record to draw.
        id: draw the record with this id instead of ``index``.
        png: where the picture goes (default: ``FILE`` without suffix + ``.{index}.png``;
            a folder: that name inside it; ``.png`` is added to a name without it).
        draw: draw the picture (needs matplotlib: ``pip install 'tabom[plot]'``).
        tokenizer: model folder or shipped name whose tokenizer labels the tokens
            (default: the record's ``gen.model`` if it is a shipped model, else ids).
        wrap: response positions per row of the picture.
    """

    path: str = ""
    index: int = field(default=0, metadata=NON_NEGATIVE)
    id: str | None = None
    png: str | None = None
    draw: bool = True
    tokenizer: str | None = None
    wrap: int = field(default=32, metadata=AT_LEAST_1)

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path: give the trajectory file (tabom inspect FILE)")
        check_ranges(self)


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def summarise_records(records: list[TrajectoryRecord]) -> dict[str, Any]:
    """Counts and decode statistics of a list of trajectory records.

    Returns:
        ``records``, ``prompts``, ``samples_per_prompt`` (min/max), ``verified`` (true /
        false / null counts), ``verified_share`` (of the checked ones, ``None`` if none is),
        ``methods`` and ``data_sources`` (counts), ``response_length`` (distinct T),
        ``steps_per_answer`` and ``tokens_per_step`` (mean/min/max over answers; steps =
        last decode step + 1, tokens = decoded positions), ``answer_chars`` (mean/min/max)
        and ``mean_decode_entropy`` (over committed positions, ``None`` if not recorded).
    """
    per_prompt = Counter(r.prompt_id for r in records)
    verdicts = Counter({True: "true", False: "false", None: "null"}[r.verified] for r in records)
    checked = verdicts["true"] + verdicts["false"]
    steps, per_step, entropies = [], [], []
    for r in records:
        decoded = [d for d in r.decoding_order if d >= 0]
        if decoded:
            steps.append(max(decoded) + 1)
            per_step.append(len(decoded) / (max(decoded) + 1))
        if r.decode_entropy is not None:
            entropies += [
                h
                for h, d in zip(r.decode_entropy, r.decoding_order, strict=True)
                if d >= 0 and h is not None
            ]
    return {
        "records": len(records),
        "prompts": len(per_prompt),
        "samples_per_prompt": {
            "min": min(per_prompt.values(), default=0),
            "max": max(per_prompt.values(), default=0),
        },
        "verified": {k: verdicts[k] for k in ("true", "false", "null")},
        "verified_share": verdicts["true"] / checked if checked else None,
        "methods": dict(Counter(r.method for r in records)),
        "data_sources": dict(Counter(r.data_source for r in records)),
        "response_length": sorted({len(r.response_token_ids) for r in records}),
        "steps_per_answer": _stats(steps),
        "tokens_per_step": _stats(per_step),
        "answer_chars": _stats([len(r.response_text) for r in records]),
        "mean_decode_entropy": statistics.fmean(entropies) if entropies else None,
    }


def format_summary(path: str | Path, s: dict[str, Any]) -> str:
    """The summary of :func:`summarise_records` as a few readable lines."""
    share = "n/a" if s["verified_share"] is None else f"{s['verified_share']:.1%}"
    v, spp = s["verified"], s["samples_per_prompt"]
    st, tps, ch = s["steps_per_answer"], s["tokens_per_step"], s["answer_chars"]
    entropy = s["mean_decode_entropy"]
    lines = [
        f"{path}: {s['records']} records, {s['prompts']} prompts, "
        f"{spp['min']}-{spp['max']} samples per prompt",
        f"verified {share} (true {v['true']}, false {v['false']}, null {v['null']})",
        f"methods {s['methods']}; data sources {s['data_sources']}",
        f"response length T {s['response_length']}; answer chars mean {ch['mean']:.1f} "
        f"[{ch['min']}, {ch['max']}]",
        f"steps per answer mean {st['mean']:.2f} [{st['min']}, {st['max']}]; tokens per step "
        f"mean {tps['mean']:.2f} [{tps['min']:.2f}, {tps['max']:.2f}]",
        "decode entropy: not recorded"
        if entropy is None
        else f"mean decode entropy at commit {entropy:.3f} nats",
    ]
    return "\n".join(lines)


def run_inspect(cfg: InspectConfig) -> int:
    """Print the summary of ``cfg.path``; draw one trajectory to PNG when ``cfg.draw``."""
    records = read_trajectories(cfg.path)
    print(format_summary(cfg.path, summarise_records(records)))
    if not cfg.draw:
        return 0
    if not records:
        print("no records to draw")
        return 0
    if cfg.id is not None:
        matches = [i for i, r in enumerate(records) if r.id == cfg.id]
        if not matches:
            raise TabomError(f"id: no record {cfg.id!r} in {cfg.path}")
        index = matches[0]
    else:
        if not 0 <= cfg.index < len(records):
            raise TabomError(f"index: {cfg.index} is outside [0, {len(records)})")
        index = cfg.index
    from tabom.plots import plot_trajectory, token_labels

    record = records[index]
    labels, note = token_labels(record, cfg.tokenizer)
    default = Path(str(Path(cfg.path).with_suffix("")) + f".{index}.png")
    png = Path(cfg.png) if cfg.png else default
    if png.is_dir():  # --png FOLDER: the picture goes inside it
        png = png / default.name
    written = plot_trajectory(record, png, labels=labels, wrap=cfg.wrap)
    print(f"drew {record.id} -> {written} ({note})")
    return 0


__all__ = ["InspectConfig", "format_summary", "run_inspect", "summarise_records"]
