"""Fingerprints of what a resumed run must share with the run that wrote its output (DESIGN §6).

A resume compares settings; these cover what a setting's *value* cannot: a prompts file edited
at the same path, model weights replaced at the same path (distill), a LoRA base replaced at
the same path (train). Each prompt's text is hashed under its id. Weights must stay cheap for
a 16 GB checkpoint, so a file up to :data:`FULL_HASH_BYTES` is hashed in full and a larger one
by its size, its safetensors header (names, dtypes, shapes, offsets) and :data:`SAMPLES` blocks
of :data:`BLOCK` bytes spread evenly over it (about 1 MiB read per file). Retrained or other
weights differ in every block; an edit confined to bytes between the sampled blocks of a large
file is not seen. Modification times are not used: a copy (``cp``, a download) changes them
without changing the weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tabom.checkpoint import ResumeError
from tabom.errors import DataFileError

FULL_HASH_BYTES = 32 << 20
"""Files up to 32 MiB are hashed in full."""
BLOCK = 1 << 16
SAMPLES = 16
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json", "script.json")
"""Which files of a model folder are its weights (with ``config.json``); the scripted stand-in's
``script.json`` (its answers) plays that part for it."""
MAX_HEADER = 100 << 20


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file: every byte up to :data:`FULL_HASH_BYTES`, else size, safetensors header
    and :data:`SAMPLES` evenly spaced blocks (see the module docstring)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(f"size {size}\n".encode())
    with path.open("rb") as f:
        if size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
            return h.hexdigest()
        if path.suffix == ".safetensors":
            n = int.from_bytes(f.read(8), "little")
            h.update(f.read(min(n, MAX_HEADER)))
        for i in range(SAMPLES):
            f.seek(i * (size - BLOCK) // (SAMPLES - 1))
            h.update(f.read(BLOCK))
    return h.hexdigest()


def weights_fingerprint(folder: str | Path) -> str:
    """One sha256 over the weight files of a model folder (names and :func:`file_fingerprint`).

    Raises:
        FileNotFoundError: the folder holds no weight file.
    """
    folder = Path(folder)
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and (p.name.endswith(WEIGHT_FILES) or p.name == "config.json")
    )
    if not any(p.name != "config.json" for p in files):
        raise FileNotFoundError(f"model {folder}: no weight file ({', '.join(WEIGHT_FILES)})")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(folder).as_posix()} {file_fingerprint(p)}\n".encode())
    return h.hexdigest()


def model_fingerprint(name_or_path: str) -> str | None:
    """:func:`weights_fingerprint` of a shipped model or local folder; ``None`` for a hub id
    (its id is the setting compared)."""
    from tabom.models import SHIPPED

    folder = SHIPPED.get(name_or_path) or Path(name_or_path)
    return weights_fingerprint(folder) if Path(folder).is_dir() else None


def prompt_hashes(prompts: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``id -> sha256 of its text`` (16 hex digits): a prompt edited under the same id changes
    its entry, and a run whose prompt count grows keeps the entries it shares."""
    return {pid: hashlib.sha256(text.encode()).hexdigest()[:16] for pid, text in prompts}


def check_fingerprints(
    path: Path, now: dict[str, Any], output: Path, model: str, prompts_source: str
) -> None:
    """Refuse to continue ``output`` onto other weights or edited prompts; reads only.

    Args:
        path: the fingerprint file written with ``output`` (absent: nothing to compare).
        now: ``{"model_weights": ..., "prompts": {id: hash}}`` of this run.
        output: the file being resumed (named in the message).
        model: the model setting (named in the message).
        prompts_source: how the prompts are named in the message (``prompts_file p.jsonl``).

    Raises:
        ResumeError: the weights differ, or a prompt shared by both runs has another text.
        DataFileError: an unreadable fingerprint file.
    """
    if not path.is_file():
        return  # written before fingerprints were recorded: the settings alone are checked
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
        old_weights, old_prompts = written["model_weights"], dict(written["prompts"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataFileError(path, 0, "<file>", f"not a fingerprint file ({e!r})") from None
    if old_weights and now["model_weights"] and old_weights != now["model_weights"]:
        raise ResumeError(
            f"resume: model: the weights in {model} are not those {output} was decoded "
            f"with (fingerprint {old_weights[:12]} then, {now['model_weights'][:12]} now: "
            "replaced at the same path?); use those weights, or another output"
        )
    changed = [k for k, v in now["prompts"].items() if old_prompts.get(k, v) != v]
    if changed:
        raise ResumeError(
            f"resume: {prompts_source}: {len(changed)} prompt(s) differ in text from those "
            f"{output} was written from (first: {changed[0]!r}; edited at the same path?); "
            "use the same prompts, or another output"
        )


def save_fingerprints(path: Path, now: dict[str, Any]) -> None:
    """Write the fingerprint file atomically, keeping prompts a shorter rerun does not list."""
    prompts = json.loads(path.read_text(encoding="utf-8"))["prompts"] if path.is_file() else {}
    payload = {"model_weights": now["model_weights"], "prompts": {**prompts, **now["prompts"]}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=0) + "\n", encoding="utf-8")
    tmp.replace(path)


__all__ = [
    "check_fingerprints",
    "BLOCK",
    "FULL_HASH_BYTES",
    "SAMPLES",
    "file_fingerprint",
    "model_fingerprint",
    "prompt_hashes",
    "save_fingerprints",
    "weights_fingerprint",
]
