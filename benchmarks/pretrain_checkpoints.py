"""Write each resumable checkpoint of a ``tabom pretrain`` run as a loadable model folder.

``tabom pretrain`` with ``save_every`` keeps Accelerate state under
``OUTPUT_DIR/checkpoints/step-N``; this writes the weights of each as
``OUTPUT_DIR/models/step-N`` (a :func:`tabom.models.save_model` folder), so the benchmarks can
measure a run's intermediate bases (issue 19: ``base_model_longadd.py --model
runs/.../models/step-450``). Folders that exist already are kept.

Run: ``python benchmarks/pretrain_checkpoints.py OUTPUT_DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from safetensors.torch import load_file

from tabom.models import save_model
from tabom.models.tiny import TinyModelConfig, build_tiny


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the pretraining output_dir")
    args = parser.parse_args()
    cfg = yaml.safe_load((args.run / "config.yaml").read_text())
    for ckpt in sorted((args.run / "checkpoints").glob("step-*")):
        dest = args.run / "models" / ckpt.name
        if dest.exists():
            continue
        dlm = build_tiny(TinyModelConfig(**cfg["model"]), seed=cfg["seed"])
        missing, unexpected = dlm.model.load_state_dict(
            load_file(str(ckpt / "model.safetensors")), strict=False
        )
        if unexpected or missing:
            raise SystemExit(f"{ckpt}: weights do not fit the config: {missing} {unexpected}")
        save_model(dlm, dest)
        print(f"{ckpt} -> {dest}")


if __name__ == "__main__":
    main()
