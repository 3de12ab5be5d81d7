"""Training checkpoints: atomic save, find the latest complete one, check a resume (DESIGN §6).

A checkpoint is ``output_dir/checkpoints/step-N``: Accelerate's state (weights or adapter,
optimizer, scheduler, RNG) plus ``trainer_state.json``. It is written to ``.tmp-step-N`` and
renamed when complete, so a folder with the state file is whole. A resumed run must share the
checkpoint's settings (``meta``); :func:`check_resume` names the ones that changed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tabom.errors import TabomError

STATE_FILE = "trainer_state.json"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``output_dir/checkpoints``, if any.

    Complete = renamed from its temporary folder, so it holds ``trainer_state.json``.
    """
    root = Path(output_dir) / "checkpoints"
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(accelerator: Any, out: Path, state: dict[str, Any]) -> Path:
    """Accelerate state + ``trainer_state.json`` into ``checkpoints/step-N``, atomically.

    A collective: every process calls it (each writes its RNG file; the main one the rest).
    """
    root = out / "checkpoints"
    final, tmp = root / f"step-{state['step']}", root / f".tmp-step-{state['step']}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process: its RNG file; main: weights, optimizer
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(tmp / STATE_FILE, "w") as f:
            f.write(json.dumps(state, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)  # re-saving the last step of a finished run
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def read_state(ckpt: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``trainer_state.json``, after checking it was written for ``meta``.

    Raises:
        TabomError: a setting in ``meta`` differs from the checkpoint's (names each one).
    """
    state = json.loads((ckpt / STATE_FILE).read_text())
    changed = {k: (state.get(k), v) for k, v in meta.items() if state.get(k) != v}
    if changed:
        raise TabomError(f"resume: {ckpt} was written for other settings {changed}")
    return state


__all__ = ["STATE_FILE", "latest_checkpoint", "read_state", "save_checkpoint"]
