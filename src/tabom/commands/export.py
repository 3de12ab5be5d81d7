"""``tabom export``: a trained LLaDA / Dream model back in its hub layout (DESIGN §2).

Reads a folder ``tabom train`` wrote (``model/``: native Llama / Qwen2 names plus the original
checkpoint's files in ``hub/``), or a hub checkpoint itself, and writes the weights under the
hub's parameter names and shards with the original ``config.json``, tokenizer, code and licence,
so the folder drops into the original hub repository (and loads with its remote code too).
Run: ``tabom export --model runs/llada_math/model --output runs/llada_math/hub``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tabom.models import NATIVE, export_model, load_model


@dataclass
class ExportConfig:
    """Config of ``tabom export``.

    Attributes:
        model: the folder to export (``tabom train``'s ``model/``, a ``save_model`` folder or a
            hub checkpoint of LLaDA / Dream) or a hub id.
        output: the folder to write (replaced atomically when complete).
        backend: ``auto`` (from the folder) or ``llada`` / ``dream``.
        dtype: the exported weights' dtype: ``auto`` = the original ``config.json``'s
            ``torch_dtype`` (or ``dtype``) when it names one, else float32.
    """

    model: str = "runs/train/model"
    output: str = "runs/export"
    backend: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    def __post_init__(self) -> None:
        if self.backend != "auto" and self.backend not in NATIVE:
            raise ValueError(
                f"backend: export writes {', '.join(NATIVE)} checkpoints, got {self.backend!r}"
            )
        if Path(self.output).resolve() == Path(self.model).resolve():
            raise ValueError(f"output: {self.output} is the model folder itself; choose another")


def _hub_dtype(hub_dir: str | None) -> str:
    """The dtype the original ``config.json`` declares, else ``float32``."""
    if hub_dir is None or not (Path(hub_dir) / "config.json").is_file():
        return "float32"
    config = json.loads((Path(hub_dir) / "config.json").read_text())
    declared = config.get("torch_dtype") or config.get("dtype")
    return declared if declared in ("float32", "bfloat16", "float16") else "float32"


def export(cfg: ExportConfig) -> Path:
    """Load ``cfg.model`` natively and write it in its hub layout to ``cfg.output``.

    Raises:
        FileNotFoundError: no such model.
        ValueError: not a native LLaDA / Dream model with its original files.
    """
    probe = load_model(cfg.model, backend=cfg.backend, dtype="float32")
    dtype = _hub_dtype(probe.extra.get("hub_dir")) if cfg.dtype == "auto" else cfg.dtype
    return export_model(probe, cfg.output, dtype=dtype)


def run(cfg: ExportConfig) -> int:
    """CLI runner of ``tabom export``: a bad model is a one-line error and exit code 2."""
    try:
        out = export(cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"tabom export: error: {e}", file=sys.stderr)
        return 2
    print(f"tabom export: wrote {out}")
    return 0


__all__ = ["ExportConfig", "export", "run"]
