"""The resumable, sharded trajectory store of ``tabom distill`` (DESIGN §4, "Resume").

Records are appended one whole line at a time and fsynced after each group; then one line per
finished group goes to the sidecar ``OUTPUT.progress``. A rerun checks every complete line
first (other settings or other prompts are refused before anything changes), then drops a torn
last line, merges the shard files ``OUTPUT.shard-r`` of a sharded run into ``OUTPUT`` in prompt
order (atomic rewrite) and reports which groups are finished: no record skipped or duplicated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabom.errors import DataFileError
from tabom.jsonl import JsonlWriter, drop_torn_tail, iter_json_lines, write_jsonl
from tabom.trajectory import RECORD_PREFIX, TrajectoryRecord, read_trajectories


@dataclass
class GroupStats:
    """One sidecar line: a finished group's verdicts and decode counts.

    Attributes:
        group: group index (prompts ``[group * prompts_per_batch, ...)``).
        prompt_ids: the group's prompt ids, in order.
        correct: ``[prompt][sample]`` verdicts (``None`` without a verifier).
        rows: answers decoded (prompts x n_samples).
        nfe: forwards of the batch (each serves every row).
        committed: response tokens committed over all rows.
        seconds: decode wall time of the group.
    """

    group: int
    prompt_ids: list[str]
    correct: list[list[bool | None]]
    rows: int
    nfe: int
    committed: int
    seconds: float


def _paths(output: Path, rank: int | None = None) -> tuple[Path, Path]:
    """(records, progress) of the output (``rank=None``) or of one shard."""
    base = output if rank is None else output.with_name(f"{output.name}.shard-{rank}")
    return base, base.with_name(base.name + ".progress")


PROGRESS_PREFIX = b'{"group": '
"""How every sidecar line begins (``GroupStats`` as JSON)."""


def read_progress(
    path: Path, groups: list[list[str]], *, torn_tail: bool = False
) -> dict[int, GroupStats]:
    """The sidecar's finished groups, checked against this run's groups of prompt ids.

    ``torn_tail``: ignore a last line without newline (the caller repairs it after the check).

    Raises:
        DataFileError: a malformed line or a group whose prompts differ from this run's.
    """
    out: dict[int, GroupStats] = {}
    names = [f.name for f in dataclasses.fields(GroupStats)]
    for line, obj in iter_json_lines(path, torn_tail=torn_tail):
        if not isinstance(obj, dict) or sorted(obj) != sorted(names):
            raise DataFileError(path, line, "<line>", f"expected an object with {names}")
        if not isinstance(obj["group"], int) or isinstance(obj["group"], bool):
            raise DataFileError(path, line, "group", f"expected an int, got {obj['group']!r}")
        stats = GroupStats(**obj)
        if not 0 <= stats.group < len(groups) or stats.prompt_ids != groups[stats.group]:
            raise DataFileError(
                path,
                line,
                "prompt_ids",
                f"group {stats.group} does not match this run's prompts "
                "(another command wrote this file: use another output, or the same settings)",
            )
        out.setdefault(stats.group, stats)
    return out


def consolidate(
    output: Path, plan_order: dict[str, int], groups: list[list[str]], gen: dict[str, Any]
) -> tuple[dict[str, str], dict[int, GroupStats]]:
    """Main process: repair torn tails, merge shard files into ``output`` in prompt order.

    Returns:
        ``(lines, stats)``: the file's records as ``id -> line`` and the finished groups.

    Raises:
        DataFileError: a bad record, a record of other settings, or an id not in the plan.
    """
    shards = sorted(
        p
        for p in output.parent.glob(f"{output.name}.shard-*")
        if not p.name.endswith((".progress", ".tmp"))
    )
    sources = [_paths(output)] + [(p, p.with_name(p.name + ".progress")) for p in shards]
    records: dict[str, TrajectoryRecord] = {}
    stats: dict[int, GroupStats] = {}
    main_ids: list[str] = []
    # 1) check every complete line of every file first: a file that is not this run's own
    # trajectory file (or sidecar) is refused before anything in it is changed
    for records_path, progress_path in sources:
        if records_path.exists():
            for rec in read_trajectories(records_path, gen=gen, torn_tail=True):
                if rec.id not in plan_order:
                    raise DataFileError(
                        records_path,
                        rec.line,
                        "id",
                        f"{rec.id!r} is not a sample of this run's prompts",
                    )
                records.setdefault(rec.id, rec)
                if records_path == output:
                    main_ids.append(rec.id)
        if progress_path.exists():
            for g, s in read_progress(progress_path, groups, torn_tail=True).items():
                stats.setdefault(g, s)
    # 2) only then cut the lines a kill tore (each must begin like one of ours)
    for records_path, progress_path in sources:
        drop_torn_tail(records_path, RECORD_PREFIX)
        drop_torn_tail(progress_path, PROGRESS_PREFIX)
    ordered = sorted(records.values(), key=lambda r: plan_order[r.id])
    if shards or main_ids != [r.id for r in ordered]:
        write_jsonl(output, ordered)
    progress_path = _paths(output)[1]
    if stats:
        tmp = progress_path.with_name(progress_path.name + ".tmp")
        with JsonlWriter(tmp, mode="wb") as w:
            for g in sorted(stats):
                w.write(dataclasses.asdict(stats[g]))
            w.sync()
        tmp.replace(progress_path)
    for shard in shards:
        shard.unlink()
        shard.with_name(shard.name + ".progress").unlink(missing_ok=True)
    return {r.id: r.to_line() for r in ordered}, stats


def _fingerprint_path(output: Path) -> Path:
    return output.with_name(output.name + ".fingerprint.json")
