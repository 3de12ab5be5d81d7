"""The resumable, sharded trajectory store of ``tabom distill`` (DESIGN §4, "Resume").

A run's prompts are cut into groups; a group's records are appended one whole line at a time
and fsynced, then one line with the group's :class:`GroupStats` goes to the sidecar
``OUTPUT.progress`` (fsynced): a group listed there is finished. Under ``accelerate launch``
process r appends to ``OUTPUT.shard-r`` (+ its sidecar). :meth:`TrajectoryStore.consolidate`
(main process) checks every complete line of every file first, so a file of other settings or
other prompts is refused before anything changes, then cuts torn last lines (a kill), merges
the shards into ``OUTPUT`` in prompt order (atomic rewrite) and returns the finished groups: a
resumed or sharded run skips no record and writes none twice. :func:`check_resume` refuses a
rerun with other settings (``OUTPUT.config.yaml``) or other weights and prompt texts
(``OUTPUT.fingerprint.json``) and reads only. :func:`summarise` reports the finished groups.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tabom.checkpoint import check_settings
from tabom.errors import DataFileError
from tabom.fingerprint import check_fingerprints
from tabom.jsonl import JsonlWriter, drop_torn_tail, iter_json_lines, loads_line, write_jsonl
from tabom.metrics import pass_at_k
from tabom.trajectory import RECORD_PREFIX, TrajectoryRecord, read_trajectories

CONFIG = ".config.yaml"
PROGRESS = ".progress"
FINGERPRINT = ".fingerprint.json"
SUMMARY = ".summary.json"
"""The sidecars' suffixes: ``OUTPUT`` + suffix (:func:`sidecar`)."""


def sidecar(output: Path, suffix: str) -> Path:
    """``OUTPUT`` + ``suffix`` beside it (``trajectories.jsonl.progress``)."""
    return output.with_name(output.name + suffix)


def shard_paths(output: Path, rank: int | None = None) -> tuple[Path, Path]:
    """(records, progress) of the output (``rank=None``) or of process ``rank``'s shard."""
    base = output if rank is None else output.with_name(f"{output.name}.shard-{rank}")
    return base, sidecar(base, PROGRESS)


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


def summarise(
    stats: dict[int, GroupStats], n_samples: int, ks: list[int], records: int
) -> dict[str, Any]:
    """Counts, verified share, pass@k and tokens per forward over all finished groups."""
    correct = [row for g in sorted(stats) for row in stats[g].correct]
    samples = sum(len(row) for row in correct)
    checked = all(v is not None for row in correct for v in row)
    verified = sum(bool(v) for row in correct for v in row) if checked else None
    forwards = sum(s.nfe * s.rows for s in stats.values())
    return {
        "prompts": len(correct),
        "samples": samples,
        "records": records,
        "verified": verified,
        "verified_share": None if verified is None else verified / max(1, samples),
        "pass_at": {
            k: sum(pass_at_k(n_samples, sum(map(bool, row)), k) for row in correct)
            / max(1, len(correct))
            for k in ks
        }
        if checked
        else {},
        "nfe_per_answer": forwards / max(1, samples),
        "tokens_per_forward": sum(s.committed for s in stats.values()) / max(1, forwards),
        "decode_seconds": round(sum(s.seconds for s in stats.values()), 3),
    }


def check_resume(
    output: Path,
    settings: dict[str, Any],
    from_record: dict[str, tuple[str, Any]],
    fingerprint: dict[str, Any] | None = None,
    *,
    model: str = "",
    prompts_source: str = "prompts",
) -> None:
    """Refuse to continue ``output`` with other settings than those that wrote it; reads only.

    Args:
        output: the trajectory file (nothing written yet: nothing to check).
        settings: this run's settings that shape the file, compared with the
            ``OUTPUT.config.yaml`` sidecar.
        from_record: without a sidecar (an older file), ``{setting: (record field, value)}``
            compared with the first record (``{"decode.score": ("method", "confidence")}``).
        fingerprint: ``{"model_weights", "prompts"}`` (:mod:`tabom.fingerprint`), compared
            with ``OUTPUT.fingerprint.json``.
        model: the model setting, and ``prompts_source`` the prompts, as messages name them.

    Raises:
        ResumeError: names each differing setting with both values.
        DataFileError: an unreadable sidecar.
    """
    written_any = output.is_file() and output.stat().st_size
    if not written_any and not sidecar(output, PROGRESS).exists():
        return  # nothing written yet
    config = sidecar(output, CONFIG)
    if config.is_file():
        try:
            written = yaml.safe_load(config.read_text())
        except yaml.YAMLError as e:
            raise DataFileError(config, 0, "<file>", f"not valid YAML ({e})") from None
        if not isinstance(written, dict):
            raise DataFileError(config, 0, "<file>", "not a mapping of settings")
        check_settings({k: written.get(k) for k in settings}, settings, str(output))
    elif written_any:
        with output.open("rb") as f:
            first = f.readline()
        rec = loads_line(first, output, 1) if first.endswith(b"\n") and first.strip() else None
        if isinstance(rec, dict):
            then = {k: rec.get(key, now) for k, (key, now) in from_record.items()}
            check_settings(then, {k: now for k, (_, now) in from_record.items()}, str(output))
    if fingerprint is not None:  # after the settings: another path is named as a setting
        check_fingerprints(sidecar(output, FINGERPRINT), fingerprint, output, model, prompts_source)


@dataclass
class TrajectoryStore:
    """One run's trajectory file, its shards and sidecars.

    Attributes:
        output: the trajectory file.
        plan_order: every sample's record id -> its place in the file (prompt, then sample).
        groups: each group's prompt ids, in order.
        gen: the ``gen`` every record must carry (other settings are refused).
    """

    output: Path
    plan_order: dict[str, int]
    groups: list[list[str]]
    gen: dict[str, Any]

    def read(self) -> tuple[dict[str, str], dict[int, GroupStats]]:
        """``(lines, stats)`` of ``OUTPUT`` as the main process left it; reads only (the
        other processes, after the main one's :meth:`consolidate`)."""
        records, progress = shard_paths(self.output)
        lines = (
            {r.id: r.to_line() for r in read_trajectories(records, gen=self.gen)}
            if records.exists()
            else {}
        )
        done = read_progress(progress, self.groups) if progress.exists() else {}
        return lines, done

    def consolidate(self) -> tuple[dict[str, str], dict[int, GroupStats]]:
        """Main process: repair torn tails, merge shard files into ``output`` in prompt order.

        Returns:
            ``(lines, stats)``: the file's records as ``id -> line`` and the finished groups.

        Raises:
            DataFileError: a bad record, a record of other settings, or an id not in the plan.
        """
        output, plan_order, groups, gen = self.output, self.plan_order, self.groups, self.gen
        shards = sorted(
            p
            for p in output.parent.glob(f"{output.name}.shard-*")
            if not p.name.endswith((".progress", ".tmp"))
        )
        sources = [shard_paths(output)] + [(p, sidecar(p, PROGRESS)) for p in shards]
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
        if stats:
            rows = (dataclasses.asdict(stats[g]) for g in sorted(stats))
            write_jsonl(sidecar(output, PROGRESS), rows)
        for shard in shards:
            shard.unlink()
            sidecar(shard, PROGRESS).unlink(missing_ok=True)
        return {r.id: r.to_line() for r in ordered}, stats

    def writer(self, rank: int | None, lines: dict[str, str]) -> GroupWriter:
        """The appender of one process: ``OUTPUT`` itself (``rank=None``) or its shard."""
        return GroupWriter(*shard_paths(self.output, rank), lines, self.output)


class GroupWriter:
    """Appends finished groups: the records first (fsync), then the group's sidecar line
    (fsync). A record whose id is in ``lines`` (the file already holds it) is not written
    again. Use as a context manager."""

    def __init__(self, records: Path, progress: Path, lines: dict[str, str], output: Path):
        self.lines, self.output = lines, output
        self._records, self._progress = JsonlWriter(records), JsonlWriter(progress)

    def add(self, records: list[TrajectoryRecord], stats: GroupStats) -> None:
        """Append a group's ``records`` (those to keep), then mark the group finished."""
        for rec in records:
            if rec.id in self.lines:
                if self.lines[rec.id] != rec.to_line():
                    warnings.warn(
                        f"{self.output}: record {rec.id!r} decoded differently now than when it "
                        "was written (other hardware or threads?); keeping the file's",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                continue
            self._records.write(rec)
        self._records.sync()
        self._progress.write(dataclasses.asdict(stats))
        self._progress.sync()

    def close(self) -> None:
        self._records.close()
        self._progress.close()

    def __enter__(self) -> GroupWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "CONFIG",
    "FINGERPRINT",
    "PROGRESS",
    "SUMMARY",
    "GroupStats",
    "GroupWriter",
    "TrajectoryStore",
    "check_resume",
    "read_progress",
    "shard_paths",
    "sidecar",
    "summarise",
]
