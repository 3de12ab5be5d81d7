"""Training checkpoints: atomic save, verified resume, fallback to the previous one (DESIGN §6).

A checkpoint is ``output_dir/checkpoints/step-N``: Accelerate's state (weights or adapter,
optimizer, scheduler, RNG) plus ``trainer_state.json``, which also lists every file of the
checkpoint with its size and sha256. It is written to ``.tmp-step-N`` and renamed when
complete. On resume the newest checkpoint is verified against that list; a damaged one
(a flipped byte, a torn RNG file, an unreadable state file) is skipped with a warning and the
previous complete one is used. Folders not named exactly ``step-N`` (``step-10.bak``) are
ignored. A resumed run must share the checkpoint's settings: :func:`resume_point` names each one
that changed, with both values.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from tabom.config import ConfigError
from tabom.errors import TabomError

STATE_FILE = "trainer_state.json"
GENERATORS = "generators-{rank}.safetensors"
"""A process's data / masking generator states (uint8 tensors; safetensors, no pickle)."""
_NAME = re.compile(r"step-(\d+)")


class CheckpointError(TabomError):
    """No usable checkpoint: every one is damaged; the message names each."""


class ResumeError(TabomError):
    """Output written with other settings than this run's; names each setting, both values."""


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (a checkpoint's files, the data a run was trained on)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """``relative path -> {"size", "sha256"}`` of every file under ``folder`` but the state file."""
    return {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != STATE_FILE
    }


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete checkpoints of ``output_dir/checkpoints`` (named ``step-N``, holding the
    state file), newest first; anything else in the folder is ignored."""
    root = Path(output_dir) / "checkpoints"
    found = [
        (int(m.group(1)), p)
        for p in root.glob("step-*")
        if (m := _NAME.fullmatch(p.name)) and p.is_dir() and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step (not verified: :func:`resumable`)."""
    found = checkpoints(output_dir)
    return found[0] if found else None


def damage(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from (``None``: it is whole).

    Checks that the state file parses and has a step, and that every file it lists exists
    with its recorded size and sha256. (A checkpoint written before files were listed is
    taken as it is.)
    """
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{STATE_FILE} is unreadable ({e})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return f"{STATE_FILE} has no step"
    for name, want in (state.get("files") or {}).items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["size"]:
            return f"{name} has {path.stat().st_size} bytes, {want['size']} were written"
        if file_sha256(path) != want["sha256"]:
            return f"{name} is damaged (its sha256 differs from the one written)"
    return None


def resumable(output_dir: str | Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest whole checkpoint and its state; damaged newer ones are skipped with a warning.

    Returns:
        ``(None, None)`` when there is no checkpoint.

    Raises:
        CheckpointError: checkpoints exist but every one is damaged (names each).
    """
    found = checkpoints(output_dir)
    reasons = []
    for i, ckpt in enumerate(found):
        why = damage(ckpt)
        if why is None:
            return ckpt, json.loads((ckpt / STATE_FILE).read_text())
        reasons.append(f"{ckpt.name}: {why}")
        fallback = found[i + 1].name if i + 1 < len(found) else "none left"
        warnings.warn(
            f"{ckpt}: damaged checkpoint ({why}); falling back to the previous one ({fallback})",
            RuntimeWarning,
            stacklevel=2,
        )
    if found:
        raise CheckpointError(
            f"resume: every checkpoint in {Path(output_dir) / 'checkpoints'} is damaged "
            f"({'; '.join(reasons)}); remove them to start over"
        )
    return None, None


def resume_point(
    output_dir: str | Path, resume: bool, settings: dict[str, Any]
) -> tuple[Path | None, dict[str, Any] | None]:
    """Where a run in ``output_dir`` starts: the checkpoint to continue, checked, or none.

    Reads only, so a refused run changes no file.

    Args:
        output_dir: the run's output folder.
        resume: the run's ``--resume``.
        settings: the settings that shape the model (no cadence ones); a checkpoint written
            with other values is refused.

    Returns:
        ``(checkpoint, its state)``, or ``(None, None)`` to start at step 0.

    Raises:
        ConfigError: checkpoints exist but ``--resume`` is not set.
        CheckpointError: every checkpoint is damaged.
        ResumeError: a setting differs from the checkpoint's (names each, both values).
    """
    if not resume:
        newest = latest_checkpoint(output_dir)
        if newest is not None:
            raise ConfigError(
                f"resume: {output_dir} already holds checkpoints ({newest.name}); pass --resume "
                "to continue that run, or use another output_dir"
            )
        return None, None
    ckpt, state = resumable(output_dir)
    if ckpt is not None:
        check_settings(state.get("settings", {}), settings, str(ckpt))
    return ckpt, state


def check_settings(written: dict[str, Any], now: dict[str, Any], where: str) -> None:
    """Refuse to continue output written with other settings.

    Raises:
        ResumeError: names every setting of ``now`` whose value in ``written`` differs.
    """
    written, now = _flat(written), _flat(now)
    missing = "<not recorded>"
    changed = [k for k in now if written.get(k, missing) != now[k]]
    if changed:
        parts = ", ".join(
            f"{k}: written with {written.get(k, missing)!r}, now {now[k]!r}" for k in changed
        )
        raise ResumeError(
            f"resume: {where} was written with other settings ({parts}); use the same settings "
            "to continue it, or another output folder"
        )


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested groups as dotted keys (``loss.td_window``), so a message names the one field."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def truncate_log(path: Path, step: int) -> None:
    """Drop ``log.jsonl`` lines past ``step`` (written after the checkpoint a run resumes from,
    or by a run killed before its first one when ``step`` is 0); rewritten atomically."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a line torn by the kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def save_checkpoint(
    accelerator: Any,
    out: Path,
    state: dict[str, Any],
    generators: dict[str, torch.Generator] | None = None,
) -> Path:
    """Accelerate state + ``trainer_state.json`` (with the file list) into ``checkpoints/step-N``.

    A collective: every process calls it (each writes its RNG file; the main one the rest).
    Written to a temporary folder and renamed when complete. ``generators``: this process's
    named generators, saved as plain tensors (:data:`GENERATORS`, read back by
    :func:`load_generators`), never as a pickle: a resume must not run code from a file.
    """
    root = out / "checkpoints"
    final, tmp = root / f"step-{state['step']}", root / f".tmp-step-{state['step']}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process: its RNG file; main: weights, optimizer
    if generators:
        from safetensors.torch import save_file

        name = GENERATORS.format(rank=accelerator.process_index)
        save_file({k: g.get_state() for k, g in generators.items()}, str(tmp / name))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(tmp / STATE_FILE, "w") as f:
            f.write(json.dumps({**state, "files": manifest(tmp)}, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)  # re-saving the last step of a finished run
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def load_generators(ckpt: Path, rank: int, generators: dict[str, torch.Generator]) -> None:
    """Set ``generators`` to the states :func:`save_checkpoint` wrote for process ``rank``.

    Raises:
        CheckpointError: the checkpoint holds no such file or state (an older tabom's,
            whose generators were a pickle that is no longer loaded).
    """
    from safetensors.torch import load_file

    path = ckpt / GENERATORS.format(rank=rank)
    pickles = sorted(p.name for p in ckpt.glob("custom_checkpoint_*.pkl"))
    if pickles:  # Accelerate would unpickle them (weights_only=False): code from a file
        raise CheckpointError(
            f"resume: {ckpt} holds {', '.join(pickles)}, a pickle tabom does not load (it could "
            "run code); start over in another output_dir"
        )
    if not path.is_file():
        raise CheckpointError(
            f"resume: {ckpt} has no {path.name} (written by an older tabom, which kept the "
            "generators in a pickle that is not loaded: a file must not run code); start over "
            "in another output_dir"
        )
    states = load_file(str(path))
    for k, g in generators.items():
        if k not in states:
            raise CheckpointError(f"resume: {path} has no generator state {k!r}")
        g.set_state(states[k])


__all__ = [
    "GENERATORS",
    "STATE_FILE",
    "CheckpointError",
    "ResumeError",
    "check_settings",
    "checkpoints",
    "damage",
    "file_sha256",
    "latest_checkpoint",
    "load_generators",
    "manifest",
    "resume_point",
    "resumable",
    "save_checkpoint",
    "truncate_log",
]
