"""What the ranking hinge (Eq. 8) sees inside its window on a model's own trajectories.

For each record and each cut s (the state the sampler saw before step s: tokens decoded at
d < s visible, the rest masked), one forward gives the entropy H of every masked position; every
ordered pair (i, j) with s ≤ d_i < d_j < s + W is one hinge term max(0, H_i − H_j + m). Printed:
the mean term (the loss at λ = 1, ``rank_ties: strict``), the share of pairs already satisfied
(H_j − H_i ≥ m), the share where both tokens are near-certain (H < 0.05 nats: such a pair can
only be satisfied by *raising* the later token's entropy to m), and the mean entropy of the
window's tokens. The measurement behind "the hinge is stuck at m" on long answers
(docs/results.md, issue 19 round 4).

    python benchmarks/rank_window_pairs.py MODEL TRAJECTORIES.jsonl --window 16 --records 64
"""

from __future__ import annotations

import argparse
import time

import torch

from tabom.decoding import pad_prompts
from tabom.losses import token_entropy
from tabom.models import load_model
from tabom.trajectory import read_trajectories

NEAR_CERTAIN = 0.05


def pair_stats(h: torch.Tensor, d: torch.Tensor, s: int, window: int, margin: float) -> list:
    """The hinge terms of one state, by a plain loop (``h``, ``d``: one record's positions)."""
    out = []
    idx = [p for p in range(d.numel()) if s <= int(d[p]) < s + window]
    for i in idx:
        for j in idx:
            if int(d[i]) < int(d[j]):
                hi, hj = float(h[i]), float(h[j])
                out.append(
                    (max(0.0, hi - hj + margin), hj - hi >= margin, max(hi, hj) < NEAR_CERTAIN)
                )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("trajectories")
    ap.add_argument("--window", type=int, default=16, help="W, in decode steps")
    ap.add_argument("--margin", type=float, default=0.1, help="m")
    ap.add_argument("--records", type=int, default=64, help="the first N records")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    dlm = load_model(args.model)
    records = read_trajectories(
        args.trajectories, tokenizer=dlm.tokenizer, vocab_size=dlm.vocab_size
    )[: args.records]
    mask_id, pad_id = dlm.mask_token_id, dlm.spec.pad_token_id
    terms, window_h = [], []
    dlm.model.eval()
    with torch.no_grad():
        for rec in records:
            d = torch.tensor(rec.decoding_order)
            seqs = [
                list(rec.prompt_token_ids)
                + [
                    t if 0 <= o < s else mask_id
                    for t, o in zip(rec.response_token_ids, d.tolist(), strict=True)
                ]
                for s in range(int(d.max()) + 1)
            ]
            ids, attn = pad_prompts(seqs, pad_id)
            logits = dlm(ids.to(dlm.device), attn.to(dlm.device))
            h_all = token_entropy(logits[:, -d.numel() :].float()).cpu()
            for s in range(int(d.max()) + 1):
                terms += pair_stats(h_all[s], d, s, args.window, args.margin)
                in_window = (d >= s) & (d < s + args.window)
                window_h += h_all[s][in_window].tolist()
    n = len(terms)
    print(
        f"model {args.model}; {len(records)} records of {args.trajectories}; W = {args.window}, "
        f"m = {args.margin}; {n} pairs"
    )
    print(
        "| mean hinge term | pairs satisfied (H_j − H_i ≥ m) | both near-certain (H < 0.05) "
        "| mean H in window | pairs per state |"
    )
    print("|---:|---:|---:|---:|---:|")
    states = sum(int(max(r.decoding_order)) + 1 for r in records)
    print(
        f"| {sum(t[0] for t in terms) / n:.4f} | {sum(t[1] for t in terms) / n:.3f} | "
        f"{sum(t[2] for t in terms) / n:.3f} | {sum(window_h) / len(window_h):.4f} | "
        f"{n / states:.1f} |"
    )
    print(f"{time.perf_counter() - t0:.0f} s wall, 1 thread")


if __name__ == "__main__":
    main()
