"""Entropy ranking loss (DESIGN §5, the paper's Eq. 8): vectorised vs per-sample loops.

Times forward + backward of the ranking term on random logits (B, P + T, V) and measures the
peak memory it adds on top of the logits, for three implementations:

- ``loop``: the reference's way: entropies of all T response positions as a (B, T, V)
  probability tensor, then a Python loop over samples and over every ordered pair;
- ``loop-pairs``: the same full-T entropies, a loop over samples, pairs vectorised per sample;
- ``vectorised``: what training runs: entropies only at the supervised rows (the window's
  candidates are among them; :func:`tabom.losses.token_entropy`), then
  :func:`tabom.losses.rank_loss` (pairs as one masked (B, K, K) tensor).

Each variant runs in its own subprocess so that peak memory is its own: on CPU the peak
resident set (``ru_maxrss``) after the run minus the one after building the inputs; on CUDA
``torch.cuda.max_memory_allocated`` minus the memory allocated after building the inputs.
Both include the (B, P + T, V) gradient of the logits, which every variant must produce.

    python benchmarks/bench_rank_loss.py                      # B=8, T=256, W=M=32, V=32000
    python benchmarks/bench_rank_loss.py --vocab 4096 --repeats 5 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

VARIANTS = ("loop", "loop-pairs", "vectorised")


def full_t_entropy(logits: torch.Tensor, prompt: int) -> torch.Tensor:
    """Entropy at every response position via a (B, T, V) probability tensor: (B, T)."""
    z = logits[:, prompt:].float()  # (B, T, V)
    return -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)


def window_positions(ds, cut, supervise, window, b):
    """Sample b's candidate positions (s ≤ d < s + W, supervised), in decode order."""
    s = int(cut[b])
    pos = [p for p in supervise[b].nonzero().flatten().tolist() if s <= ds[b, p] < s + window]
    return sorted(pos, key=lambda p: (int(ds[b, p]), p))


def loss_loop(logits, ds, cut, supervise, *, prompt, window, margin):
    """Per-sample, per-pair Python loop over full-T entropies (strict pairs)."""
    h = full_t_entropy(logits, prompt)  # (B, T)
    terms = []
    for b in range(logits.shape[0]):
        if cut[b] < 0:
            continue
        pos = window_positions(ds, cut, supervise, window, b)
        pair_terms = [
            torch.relu(h[b, i - prompt] - h[b, j - prompt] + margin)
            for i in pos
            for j in pos
            if ds[b, i] < ds[b, j]
        ]
        if pair_terms:
            terms.append(torch.stack(pair_terms).mean())
    return torch.stack(terms).mean()


def loss_loop_pairs(logits, ds, cut, supervise, *, prompt, window, margin):
    """Per-sample loop over full-T entropies, each sample's pairs as one (K, K) tensor."""
    h = full_t_entropy(logits, prompt)  # (B, T)
    terms = []
    for b in range(logits.shape[0]):
        if cut[b] < 0:
            continue
        idx = torch.tensor(window_positions(ds, cut, supervise, window, b))
        hb, d = h[b, idx - prompt], ds[b, idx]
        pairs = d[:, None] < d[None, :]
        if pairs.any():
            terms.append(
                (torch.relu(hb[:, None] - hb[None, :] + margin) * pairs).sum() / pairs.sum()
            )
    return torch.stack(terms).mean()


def loss_vectorised(logits, ds, cut, supervise, *, prompt, window, margin):
    """:func:`tabom.losses.rank_loss` (strict pairs) on entropies at the supervised rows."""
    from tabom.losses import rank_loss, token_entropy

    sel = supervise.bool()
    entropy = torch.zeros(sel.shape, device=logits.device).index_put(
        sel.nonzero(as_tuple=True), token_entropy(logits[sel])
    )
    return rank_loss(entropy, ds, cut, window=window, margin=margin, supervise=supervise).loss


def peak_mb(device: str) -> float:
    """Peak memory so far: CUDA allocated, or CPU resident set (Linux reports KiB)."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(args: argparse.Namespace) -> dict:
    """Build the inputs, then time forward + backward of one variant; returns its numbers."""
    from tabom.masking import time_delay_mask

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    b, p, t = args.batch, args.prompt, args.response
    # 1) inputs: one token per step in a random order, cut by time-delay masking (M = W)
    ids = torch.randint(0, args.vocab - 1, (b, p + t), generator=g)
    resp = torch.zeros(b, p + t, dtype=torch.bool)
    resp[:, p:] = True
    ds = torch.full((b, p + t), -1, dtype=torch.long)
    for row in range(b):
        ds[row, p + torch.randperm(t, generator=g)] = torch.arange(t)
    plan = time_delay_mask(
        ids, ds, response_mask=resp, window=args.window, mask_token_id=args.vocab - 1, generator=g
    )
    ds, cut, sup = ds.to(device), plan.cut.to(device), plan.supervise.to(device)
    logits = torch.randn(b, p + t, args.vocab, generator=g).to(device).requires_grad_(True)
    fn = {"loop": loss_loop, "loop-pairs": loss_loop_pairs, "vectorised": loss_vectorised}
    fn = fn[args.only]
    kw = dict(prompt=p, window=args.window, margin=args.margin)

    # 2) baseline memory, then untimed warm-up runs + timed repeats
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = peak_mb("cpu")
    times = []
    for _ in range(args.warmup + args.repeats):
        logits.grad = None
        t0 = time.perf_counter()
        loss = fn(logits, ds, cut, sup, **kw)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {
        "variant": args.only,
        "loss": loss.item(),
        "median_ms": 1e3 * statistics.median(times[args.warmup :]),
        "min_ms": 1e3 * min(times[args.warmup :]),
        "peak_extra_mb": peak_mb(device.type) - base,
        "logits_mb": logits.numel() * 4 / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    """Run every variant in a subprocess and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--window", type=int, default=32, help="W = M, in decode steps")
    ap.add_argument("--margin", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--only", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.only:
        print(json.dumps(run_variant(args)))
        return 0

    rows = []
    passthrough = list(argv if argv is not None else sys.argv[1:])
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, *passthrough, "--only", variant]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    losses = [r["loss"] for r in rows]
    if max(losses) - min(losses) > 1e-4 * max(1.0, abs(losses[0])):
        raise RuntimeError(f"variants disagree: {losses}")

    print(
        f"B={args.batch} P={args.prompt} T={args.response} V={args.vocab} W=M={args.window}, "
        f"{args.device}, {args.threads} threads, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}; logits {rows[0]['logits_mb']:.0f} MB; "
        f"loss {losses[0]:.5f} (all variants)"
    )
    print()
    print("| implementation | fwd+bwd median (ms) | min (ms) | peak extra memory (MB) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} "
            f"| {r['peak_extra_mb']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
