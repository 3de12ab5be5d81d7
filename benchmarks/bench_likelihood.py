"""The likelihood path (issue 22): requests per second, and the variance of the draws.

``speed``: :func:`tabom.likelihood.estimate_nelbo` on a model of the real-code Dream fixture's
shape (2 layers, hidden 64, 4 heads / 2 KV heads, MLP 128, vocab 448, shifted logits: the
fixture itself (vendored under ``tests/fixtures/real-code``) when present, else a Qwen2 stand-in of that
shape), R requests of a C-token context and an N-token continuation, at 8, 32 and 128
Monte-Carlo samples; one thread, process CPU time (``time.process_time``: the machine is
shared, wall time is not the path's cost), median over repeats after a warm-up.

``variance``: the NELBO of the shipped base model's reference answers (new and old domain),
estimated ``--repeats`` times with independent seeds per draw kind (plain, stratified,
antithetic, orders), at K samples: the variance of the estimate across repeats, per request,
averaged; the ratio plain / kind is the variance reduction at equal cost (K rows per estimate
for every kind).

    python benchmarks/bench_likelihood.py speed
    python benchmarks/bench_likelihood.py variance --samples 8 32
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from tabom.likelihood import LikelihoodConfig, estimate_nelbo
from tabom.likelihood_sets import response_ids
from tabom.models import load_model
from tabom.tasks import NEW_DOMAIN, OLD_DOMAIN, make_task

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "real-code" / "dream"


def fixture_model(tmp: Path):
    """The Dream fixture, or a stand-in of its shape; ``(dlm, source)``."""
    if FIXTURE.is_dir():
        return load_model(str(FIXTURE), dtype="float32"), f"the real-code fixture {FIXTURE}"
    from tabom.models.standin import build_standin, save_standin

    model, tok = build_standin(
        "dream", hidden_size=64, num_heads=4, intermediate_size=128, max_length=1024, seed=0
    )
    path = save_standin(model, tok, tmp / "dream-shaped", backend="dream")
    return load_model(str(path)), "a Qwen2 stand-in of the fixture's shape (char vocabulary)"


def speed(args: argparse.Namespace) -> None:
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        dlm, source = fixture_model(Path(tmp))
        gen = torch.Generator().manual_seed(0)
        V = dlm.vocab_size
        reqs = [
            (
                torch.randint(0, min(V, 400), (args.context,), generator=gen).tolist(),
                torch.randint(0, min(V, 400), (args.continuation,), generator=gen).tolist(),
            )
            for _ in range(args.requests)
        ]
        kw = {"mask_token_id": dlm.mask_token_id, "pad_token_id": dlm.spec.pad_token_id}
        print(
            f"model: {source}; V = {V}; {args.requests} requests of context {args.context} + "
            f"continuation {args.continuation}; batch {args.batch} rows per forward; "
            f"{platform.machine()}, 1 thread, torch {torch.__version__}\n"
        )
        print("| MC samples K | CPU s (median of repeats) | requests / CPU s | rows / CPU s |")
        print("|---:|---:|---:|---:|")
        for K in args.samples:
            cfg = LikelihoodConfig(n_samples=K, batch_size=args.batch)
            estimate_nelbo(dlm, reqs[:2], cfg, **kw)  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.process_time()
                estimate_nelbo(dlm, reqs, cfg, **kw)
                times.append(time.process_time() - t0)
            t = statistics.median(times)
            print(f"| {K} | {t:.2f} | {args.requests / t:.1f} | {args.requests * K / t:.0f} |")


def variance(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dlm = load_model("tiny-base")
    kw = {"mask_token_id": dlm.mask_token_id, "pad_token_id": dlm.spec.pad_token_id}
    print(
        f"model: tiny-base; {args.problems} reference answers per domain (response canvas); "
        f"{args.repeats} independent estimates per draw kind; 1 thread\n"
    )
    kinds = ("plain", "stratified", "antithetic", "orders")
    head = ["domain", "K", "mean NELBO / answer", *(f"var {k}" for k in kinds)]
    head += [f"plain / {k}" for k in kinds[1:]]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for domain, spec in (("new", NEW_DOMAIN), ("old", OLD_DOMAIN)):
        task = make_task(spec)
        exs = task.generate(args.problems, torch.Generator().manual_seed(1234))
        pairs = [
            (dlm.encode_prompt(ex.prompt), response_ids(dlm, ex.answer, task.gen_length))
            for ex in exs
        ]
        for K in args.samples:
            var, mean = {}, 0.0
            for draws in kinds:
                runs = []
                for rep in range(args.repeats):
                    cfg = LikelihoodConfig(n_samples=K, draws=draws, batch_size=512, seed=rep)
                    runs.append(estimate_nelbo(dlm, pairs, cfg, **kw).nelbo)
                stack = torch.stack(runs)  # (repeats, R)
                var[draws] = float(stack.var(dim=0).mean())
                mean = float(stack.mean()) if draws == "plain" else mean
            cells = [domain, str(K), f"{mean:.3f}", *(f"{var[k]:.4f}" for k in kinds)]
            cells += [f"{var['plain'] / var[k]:.2f}×" for k in kinds[1:]]
            print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--samples", type=int, nargs="+", default=[8, 32, 128])
    s.add_argument("--requests", type=int, default=32)
    s.add_argument("--context", type=int, default=64)
    s.add_argument("--continuation", type=int, default=16)
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--repeats", type=int, default=3)
    v = sub.add_parser("variance")
    v.add_argument("--samples", type=int, nargs="+", default=[8, 32])
    v.add_argument("--problems", type=int, default=50)
    v.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    speed(args) if args.what == "speed" else variance(args)


if __name__ == "__main__":
    main()
