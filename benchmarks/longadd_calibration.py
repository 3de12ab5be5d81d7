"""Why confidence order does not beat random order on long addition (issue 19): calibration of
the base model on the digits whose carry is ambiguous.

At the first decode step (the 49-digit answer fully masked), for 64 new-domain problems
(``longadd:digits=48``, seed 1234, as in ``base_model_longadd.py``): the model's top
probability and whether its argmax is right, split into digits whose carry-in is decided by the
operand column right below (its digits do not sum to 9) and digits sitting above a
carry-propagating column (its digits sum to 9, so the carry depends on columns further down).
Confidence order can only wait for the lower digit on the second kind if the model is less
sure of them. Also the mean Kendall τ-b of the greedy confidence-order decode order against
left to right.

Run: ``python benchmarks/longadd_calibration.py MODEL [MODEL ...]`` (default ``tiny-longadd``).
"""

from __future__ import annotations

import argparse

import torch

from tabom.batch_decode import decode_texts
from tabom.decoding import DecodeConfig
from tabom.evaluate import budget_for, tau_to_order
from tabom.models import load_model
from tabom.tasks import make_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["tiny-longadd"])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = make_task("longadd:digits=48")
    exs = task.generate(args.n, torch.Generator().manual_seed(args.seed))
    n_ans = task.digits + 1
    print("| model | digits | n | mean top p | argmax right | top p > 0.9 |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.models:
        dlm = load_model(name)
        enc = dlm.tokenizer([e.prompt for e in exs], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + [dlm.mask_token_id] * task.gen_length for p in enc])
        with torch.no_grad():
            probs = dlm.model(input_ids=ids).logits[:, -task.gen_length :, :].float().softmax(-1)
        stats: dict[str, tuple[list[float], list[float]]] = {
            "carry decided by the column below": ([], []),
            "above a carry-propagating column": ([], []),
        }
        for b, e in enumerate(exs):
            x, y = e.prompt.rstrip("=").split("+")
            for j in range(n_ans):  # answer digit j from the left sits in column c from the right
                c = n_ans - 1 - j
                ambiguous = c >= 1 and int(x[-c]) + int(y[-c]) == 9  # column c - 1 sums to 9
                target = dlm.tokenizer(e.answer[j], add_special_tokens=False)["input_ids"][0]
                conf, right = stats[list(stats)[ambiguous]]
                conf.append(probs[b, j].max().item())
                right.append(float(probs[b, j].argmax().item() == target))
        for kind, (conf, right) in stats.items():
            print(
                f"| {name} | {kind} | {len(conf)} | {sum(conf) / len(conf):.3f} | "
                f"{sum(right) / len(right):.3f} | {sum(v > 0.9 for v in conf) / len(conf):.3f} |"
            )
        cfg = budget_for(task, DecodeConfig(score="confidence"))
        _, out = decode_texts(dlm, [e.prompt for e in exs], cfg)
        steps = out.decoding_order.tolist()
        taus = tau_to_order(steps, [list(range(len(r))) for r in steps], min_rank=0)
        print(
            f"| {name} | τ-b(confidence decode order, left to right) | {len(taus)} | "
            f"{sum(taus) / len(taus):+.3f} | | |"
        )


if __name__ == "__main__":
    main()
