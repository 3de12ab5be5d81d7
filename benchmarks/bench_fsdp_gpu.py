"""FSDP full fine-tuning of an LLaDA-8B-shaped model on GPUs: steps/s and peak memory (issue 16).

Not run yet: no GPU was available to this work. On a GPU machine it builds a random model of
LLaDA-8B's shape (width 4096, MLP 12288, 32 heads, vocabulary 126464; ``--layers`` blocks,
2 by default so that it fits one GPU unsharded too), saves it as an ``llada`` stand-in, and
runs the documented command::

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes N \\
        -m tabom.cli train --lora_rank 0 --dtype float32 --mixed_precision bf16 \\
        --gradient_checkpointing true ...

on ground-truth addition answers (``--objective sft --gt_task``: no trajectories needed),
then reads ``log.jsonl``: steps/s from ``elapsed_s`` (the steps after the first, so start-up
and the first step's allocations are left out) and ``peak_mem_gib``
(``torch.cuda.max_memory_allocated`` of the main process). The engine line ``tabom train``
prints is shown too. Write the result to docs/benchmarks.md with the command and the GPU.

    python benchmarks/bench_fsdp_gpu.py --processes 1          # one H100: FSDP2 over 1 GPU
    python benchmarks/bench_fsdp_gpu.py --processes 8 --layers 32 --config fsdp1.yaml
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(folder: Path, layers: int, seq: int) -> None:
    """A random LLaDA-8B-shaped stand-in (bf16 is not needed: full fine-tuning loads fp32)."""
    import torch

    from tabom.models.standin import build_standin, save_standin

    torch.manual_seed(0)
    model, tok = build_standin(
        "llada",
        hidden_size=4096,
        num_layers=layers,
        num_heads=32,
        intermediate_size=12288,
        max_length=seq,
    )
    model.resize_token_embeddings(126464)  # LLaDA's vocabulary: the head's real cost
    save_standin(model, tok, folder, backend="llada")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--config", default="fsdp.yaml", help="a file of configs/accelerate/")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq", type=int, default=640, help="max positions of the model")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "llada-8b-shape"
        build(model, args.layers, args.seq)
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "accelerate.commands.launch"]
        cmd += ["--config_file", str(ROOT / "configs" / "accelerate" / args.config)]
        cmd += ["--num_processes", str(args.processes), "-m", "tabom.cli", "train"]
        cmd += ["--model", str(model), "--objective", "sft", "--gt_examples", "512"]
        cmd += ["--gt_task", "addition:min_digits=60,max_digits=80,width=200"]
        cmd += ["--lora_rank", "0", "--dtype", "float32", "--mixed_precision", "bf16"]
        cmd += ["--gradient_checkpointing", "true", "--batch_size", str(args.batch_size)]
        cmd += ["--grad_accum", "1", "--max_steps", str(args.steps), "--warmup_steps", "1"]
        cmd += ["--lr", "1e-5", "--progress", "false", "--num_threads", "0"]
        cmd += ["--output_dir", str(out)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            sys.exit(run.stderr[-4000:])
        engine = [x for x in run.stdout.splitlines() if x.startswith("train: engine")]
        log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        first, last = log[0], log[-1]
        result = {
            "command": " ".join(cmd),
            "engine": engine[0] if engine else None,
            "layers": args.layers,
            "processes": args.processes,
            "steps_per_s": (last["step"] - first["step"]) / (last["elapsed_s"] - first["elapsed_s"]),
            "peak_mem_gib_main_process": max(r.get("peak_mem_gib", 0.0) for r in log),
            "final_ce": last["ce"],
        }
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
