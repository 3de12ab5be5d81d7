"""The LM head only where the loss or the sampler needs it (issue 11): memory and time.

Two measurements, each comparing the full-logits path (what tabom did before: the head over
all B x L positions, then gathers) with the head at chosen positions (``DiffusionLM.hidden_states``
then ``DiffusionLM.logits_at``):

``train``: one training step of ``tabom`` (time-delay masking, CE + entropy ranking term,
backward; no optimizer step) on a random bidirectional Llama. ``full`` is the old
``compute_objective`` body (the CE and the entropies each gather from the (B, L, V) logits
and each backward fills a (B, L, V) gradient; since issue 20 the same gathers written inline,
then :func:`tabom.losses.rank_loss`); ``positions`` is today's
:func:`tabom.objectives.compute_objective` (one (N, V) gather, optionally chunked).

``decode``: one :func:`tabom.decoding.decode` call; ``full`` wraps the model so that it returns
all (B, L, V) logits (the sampler then takes the block's rows, as before), ``positions`` passes
the :class:`~tabom.models.base.DiffusionLM` itself (logits only at still-masked positions of the
active block).

Peak memory: each (path, vocabulary) runs in its own subprocess; the number is the peak
resident set during the step (``VmHWM``, reset through ``/proc/self/clear_refs`` after building
the model and the batch) minus the resident set at that point, i.e. what the step (or the
decode) adds, with glibc's mmap threshold fixed at 1 MB so that
every freed buffer leaves the resident set (the CPU stand-in for
``torch.cuda.max_memory_allocated``). Time: process CPU time with one thread
(``time.process_time``; the machine is shared, so wall time is not the step's cost), the two
paths interleaved within each repeat in one process, median and min over repeats after a
warm-up, plus the median of per-repeat ratios.

    python benchmarks/bench_head.py train --vocab 32000 126464       # memory + time table
    python benchmarks/bench_head.py decode --vocab 126464            # B=16, L=512
    python benchmarks/bench_head.py train --one full --vocab 126464 --measure memory  # one cell
    python benchmarks/bench_head.py train --objective tad --vocab 32000 126464  # tad, prepared

``--objective tad``: one ``tad`` step with the student a prepared model (as under ``tabom
train``), before (the prepared forward returned all logits) and after (the head at the pairs
inside the forward); see :func:`tad_objective`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from tabom.losses import rank_loss, token_entropy
from tabom.masking import time_delay_mask
from tabom.models.base import DiffusionLM

PATHS = ("full", "positions")


def _status_mb(key: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def reset_peak_rss() -> float:
    """Reset the peak resident set to the current one (Linux ``clear_refs`` 5); returns it."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def build_model(vocab: int, args: argparse.Namespace, train: bool) -> DiffusionLM:
    """A random bidirectional Llama with ``vocab`` tokens (mask id = vocab - 1)."""
    from bench_train_step import build_model as build  # the sibling script, run from here

    return build(args, vocab=vocab, train=train)


class FullLogits:
    """A model returning all (B, L, V) aligned logits: the sampler's and loss's old input."""

    def __init__(self, dlm: DiffusionLM) -> None:
        self.dlm = dlm

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.dlm(ids, mask)


# --------------------------------------------------------------------------- train


def train_batch(vocab: int, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Random [prompt | response] ids and a random one-token-per-step decode order."""
    from bench_train_step import build_batch

    return build_batch(args, vocab=vocab)


def full_objective(dlm: DiffusionLM, batch: dict, args: argparse.Namespace) -> torch.Tensor:
    """The old ``compute_objective`` body for ``tabom``: full logits, two gathers."""
    plan = time_delay_mask(
        batch["input_ids"],
        batch["decoding_order"],
        response_mask=batch["response_mask"],
        window=args.window,
        mask_token_id=dlm.mask_token_id,
        generator=torch.Generator().manual_seed(2),
    )
    logits = dlm(plan.input_ids, batch["attention_mask"])  # (B, L, V)
    sel = plan.supervise
    ce = torch.nn.functional.cross_entropy(logits[sel].float(), batch["input_ids"][sel])
    entropy = torch.zeros(sel.shape).index_put(
        sel.nonzero(as_tuple=True), token_entropy(logits[sel])
    )
    rank = rank_loss(
        entropy, batch["decoding_order"], plan.cut, window=args.window, margin=0.1, supervise=sel
    ).loss
    return ce + rank


def trajectory_batch(batch: dict):
    """The benchmark's batch as the :class:`~tabom.train_data.TrajectoryBatch` the objectives take."""
    from tabom.train_data import TrajectoryBatch

    return TrajectoryBatch(
        batch["input_ids"],
        batch["attention_mask"],
        batch["response_mask"],
        batch["decoding_order"],
        decode_entropy=None,
        ids=[],
    )


def positions_objective(dlm: DiffusionLM, batch: dict, args: argparse.Namespace) -> torch.Tensor:
    """Today's ``compute_objective``: the head at the supervised and ranked rows only."""
    from tabom.objectives import LossConfig, compute_objective

    out = compute_objective(
        dlm,
        trajectory_batch(batch),
        objective="tabom",
        loss=LossConfig(
            td_window=args.window,
            rank_window=args.window,
            rank_margin=0.1,
            rank_weight=1.0,
            loss_chunk=args.loss_chunk,
        ),
        mask_token_id=dlm.mask_token_id,
        generator=torch.Generator().manual_seed(2),
    )
    return out.total


def tad_objective(dlm: DiffusionLM, batch: dict, path: str) -> torch.Tensor:
    """``tad`` as ``tabom train`` runs it, the student a prepared model: ``full`` returns all
    (B, L, V) logits from its forward (what :class:`~tabom.models.prepared.PreparedLM` gave
    ``tad`` before: the head over every position, then gathers); ``positions`` is today's
    :class:`~tabom.models.prepared.PreparedLM`, whose one forward applies the head at the near
    and distant pairs only (``head.pair_logits``). The teacher is the same network under no
    grad, its head at the distant rows (the same in both paths)."""
    from tabom.models.prepared import HeadForward, PreparedLM
    from tabom.objectives import LossConfig, compute_objective

    student = (
        FullLogits(dlm)
        if path == "full"
        else PreparedLM(model=HeadForward(dlm.model, dlm.spec), tokenizer=None, spec=dlm.spec)
    )
    out = compute_objective(
        student,
        trajectory_batch(batch),
        objective="tad",
        loss=LossConfig(tad_delta=8),
        mask_token_id=dlm.mask_token_id,
        generator=torch.Generator().manual_seed(2),
        teacher=dlm,
    )
    return out.total


def train_step(dlm: DiffusionLM, batch: dict, path: str, args: argparse.Namespace) -> float:
    """compute the objective + backward; returns the loss value."""
    if args.objective == "tad":
        loss = tad_objective(dlm, batch, path)
    else:
        loss = (full_objective if path == "full" else positions_objective)(dlm, batch, args)
    loss.backward()
    for p in dlm.model.parameters():
        p.grad = None
    return float(loss.detach())


# --------------------------------------------------------------------------- decode


def decode_inputs(vocab: int, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab - 1, (args.dbatch, args.dprompt), generator=g)
    return ids, torch.ones_like(ids)


def decode_cfg(args: argparse.Namespace):
    from tabom.decoding import DecodeConfig

    return DecodeConfig(
        gen_length=args.dgen,
        steps=args.dsteps,
        block_length=args.dblock,
        score=args.score,
        temperature=args.temperature,
    )


def decode_once(dlm: DiffusionLM, inputs, path: str, args: argparse.Namespace):
    from tabom.decoding import decode

    model = FullLogits(dlm) if path == "full" else dlm
    g = torch.Generator().manual_seed(3)
    ids, mask = inputs
    return decode(model, ids, mask, decode_cfg(args), mask_token_id=dlm.mask_token_id, generator=g)


# --------------------------------------------------------------------------- drivers


def one(args: argparse.Namespace) -> dict:
    """One (task, path, vocab) cell in this process: memory or interleaved-free time."""
    vocab = args.vocab[0]
    torch.set_num_threads(args.threads)
    dlm = build_model(vocab, args, train=args.task == "train")
    inputs = train_batch(vocab, args) if args.task == "train" else decode_inputs(vocab, args)
    before = reset_peak_rss()  # the peak of building the model and batch does not count
    c0 = time.process_time()
    if args.task == "train":
        value = train_step(dlm, inputs, args.one, args)
        extra = {"loss": value}
    else:
        with torch.no_grad():
            out = decode_once(dlm, inputs, args.one, args)
        extra = {
            "nfe": out.nfe,
            "response_sum": int(out.response_ids.sum()),
            "decode_step_sum": int(out.decoding_order.sum()),
        }
    cpu = time.process_time() - c0
    peak = _status_mb("VmHWM") - before
    return {"path": args.one, "vocab": vocab, "peak_mb": peak, "cpu_s": cpu, **extra}


def interleaved_time(vocab: int, args: argparse.Namespace) -> dict[str, list[float]]:
    """CPU seconds per path, the paths interleaved within each repeat (one process)."""
    torch.set_num_threads(args.threads)
    dlm = build_model(vocab, args, train=args.task == "train")
    inputs = train_batch(vocab, args) if args.task == "train" else decode_inputs(vocab, args)
    times: dict[str, list[float]] = {p: [] for p in PATHS}
    results: dict[str, object] = {}
    for i in range(args.warmup + args.repeats):
        for path in PATHS:
            c0 = time.process_time()
            if args.task == "train":
                results[path] = round(train_step(dlm, inputs, path, args), 6)
            else:
                with torch.no_grad():
                    out = decode_once(dlm, inputs, path, args)
                results[path] = (out.response_ids.tolist(), out.decoding_order.tolist())
            if i >= args.warmup:
                times[path].append(time.process_time() - c0)
            print(f"  V={vocab} {path}: {time.process_time() - c0:.2f} s CPU", flush=True)
    if args.task == "decode":
        same = results["full"] == results["positions"]
        print(f"V={vocab}: decode outputs identical across paths: {same}", flush=True)
    else:
        print(f"V={vocab}: losses {results}", flush=True)
    return times


def memory(vocab: int, path: str, args: argparse.Namespace) -> dict:
    """Run one cell in a fresh subprocess (its own peak RSS)."""
    cmd = [sys.executable, __file__, args.task, "--one", path, "--vocab", str(vocab)]
    for key in ("objective", "hidden", "layers", "heads", "batch", "prompt", "gen", "window",
                "loss_chunk", "dbatch", "dprompt", "dgen", "dblock", "dsteps", "score", "temperature",
                "threads"):  # fmt: skip
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    # a fixed mmap threshold: glibc otherwise raises it after large frees and keeps later
    # buffers of up to 32 MB in its heap, so that the peak RSS would count freed chunks
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["train", "decode"])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 126464])
    parser.add_argument("--measure", choices=["both", "memory", "time"], default="both")
    parser.add_argument("--one", choices=PATHS, help="run one cell here and print JSON")
    parser.add_argument("--objective", choices=["tabom", "tad"], default="tabom", help="train")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="train: B")
    parser.add_argument("--prompt", type=int, default=128, help="train: P")
    parser.add_argument("--gen", type=int, default=256, help="train: T")
    parser.add_argument("--window", type=int, default=32, help="train: M = W, decode steps")
    parser.add_argument("--loss-chunk", type=int, default=0, help="train: rows per head chunk")
    parser.add_argument("--dbatch", type=int, default=16, help="decode: B")
    parser.add_argument("--dprompt", type=int, default=256, help="decode: P")
    parser.add_argument("--dgen", type=int, default=256, help="decode: T (L = P + T)")
    parser.add_argument("--dblock", type=int, default=32, help="decode: block length")
    parser.add_argument("--dsteps", type=int, default=16, help="decode: steps")
    parser.add_argument("--score", default="confidence")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.task == "decode":
        args.prompt, args.gen = args.dprompt, args.dgen  # rotary length of the model
    if args.one:
        print(json.dumps(one(args)))
        return

    shape = (
        f"{args.objective}: B={args.batch} P={args.prompt} T={args.gen} "
        + ("δ=8" if args.objective == "tad" else f"M=W={args.window} loss_chunk={args.loss_chunk}")
        if args.task == "train"
        else f"B={args.dbatch} P={args.dprompt} T={args.dgen} block={args.dblock} "
        f"steps={args.dsteps} score={args.score} temperature={args.temperature}"
    )
    print(
        f"# {args.task}: {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
        f"Llama d={args.hidden} layers={args.layers}; {shape}; "
        f"{args.repeats} repeats after {args.warmup} warm-up",
        flush=True,
    )
    rows = []
    for vocab in args.vocab:
        row: dict[str, object] = {"vocab": vocab}
        if args.measure in ("both", "memory"):
            for path in PATHS:
                row[f"{path}_mb"] = memory(vocab, path, args)["peak_mb"]
        if args.measure in ("both", "time"):
            t = interleaved_time(vocab, args)
            for path in PATHS:
                row[f"{path}_ms"] = statistics.median(t[path]) * 1e3
                row[f"{path}_min_ms"] = min(t[path]) * 1e3
            row["ratio"] = statistics.median(
                a / b for a, b in zip(t["full"], t["positions"], strict=True)
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| V | full: peak MB | positions: peak MB | memory ratio | full: CPU ms (median/min) "
          "| positions: CPU ms (median/min) | time ratio (paired median) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mem = (
            f"{r['full_mb']:,.0f} | {r['positions_mb']:,.0f} | "
            f"{r['full_mb'] / max(r['positions_mb'], 1e-9):.1f}x"
            if "full_mb" in r
            else "– | – | –"
        )
        tim = (
            f"{r['full_ms']:,.0f} / {r['full_min_ms']:,.0f} | "
            f"{r['positions_ms']:,.0f} / {r['positions_min_ms']:,.0f} | {r['ratio']:.2f}x"
            if "full_ms" in r
            else "– | – | –"
        )
        print(f"| {r['vocab']:,} | {mem} | {tim} |")


if __name__ == "__main__":
    main()
