"""Distillation throughput on an 8B-shaped random LLaDA in bf16, exact and cached (issue 18).

One command on one CUDA GPU (about 3-5 minutes on an H100; under 8 by design):

    python benchmarks/gpu_distill_cache.py              # 4 layers of LLaDA-8B's shape
    python benchmarks/gpu_distill_cache.py --layers 2 --batch 16   # if memory or time is short

The model has LLaDA-8B's width (d 4096, 32 heads, MLP 12288, V 126464, untied head) and
``--layers`` of its 32 layers, random weights, bf16, SDPA. It decodes like ``tabom distill``
(temperature 1, one token per step, entropies recorded, score ``confidence``) a batch of
random prompts with ``--decode.cache`` none, prefix and dual, after one warm-up decode of each,
and prints a markdown table for docs/benchmarks.md: response tokens per second, forwards per
answer, peak GPU memory, and the share of tokens equal to the exact sampler's (random weights:
the caches' agreement here says little about a trained model's; see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from bench_sampler import build_model

from tabom.decoding import DecodeConfig, decode, pad_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt-length", type=int, default=192)
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true",
                    help="a tiny model on CPU: checks that the script runs, numbers mean nothing")  # fmt: skip
    args = ap.parse_args()
    if args.smoke:
        device, dtype, shape = "cpu", torch.float32, (64, 4, 128, 512)
        args.batch, args.prompt_length, args.gen_length, args.block_length = 2, 8, 16, 8
    elif not torch.cuda.is_available():
        sys.exit("gpu_distill_cache.py needs a CUDA device (or --smoke)")
    else:
        device, dtype, shape = "cuda", torch.bfloat16, (4096, 32, 12288, 126464)
    d, heads, inter, vocab = shape
    t0 = time.perf_counter()
    dlm = build_model(d, args.layers, heads, inter, vocab, args.seed, device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    B, T = args.batch, args.gen_length
    g = torch.Generator().manual_seed(args.seed)
    prompts = torch.randint(0, vocab - 4, (B, args.prompt_length), generator=g).tolist()
    ids, mask = pad_prompts(prompts, dlm.spec.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows, exact = [], None
    for mode in ("none", "prefix", "dual"):
        cfg = DecodeConfig(gen_length=T, steps=T, block_length=args.block_length,
                           temperature=args.temperature, record_entropy=True, cache=mode)  # fmt: skip
        warm = DecodeConfig(gen_length=args.block_length, steps=args.block_length,
                            block_length=args.block_length, cache=mode)  # fmt: skip
        decode(dlm, ids, mask, warm, mask_token_id=dlm.mask_token_id)  # kernels, allocator
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        gen = torch.Generator(device=device).manual_seed(1)
        t0 = time.perf_counter()
        out = decode(dlm, ids, mask, cfg, mask_token_id=dlm.mask_token_id, generator=gen)
        sync()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        resp = out.response_ids
        exact = resp if exact is None else exact
        agree = (resp == exact).float().mean().item()
        rows.append((mode, B * T / seconds, out.nfe, seconds, peak, agree))
    name = torch.cuda.get_device_name() if cuda else "CPU smoke run (tiny shapes)"
    print(f"{name}; random LLaDA-8B-shaped model, {args.layers} of 32 layers, {dtype} "
          f"(built in {build_s:.0f} s); batch {B}, prompt {args.prompt_length}, response {T}, "
          f"block {args.block_length}, {T} steps, temperature {args.temperature}")
    print()
    print("| cache | tokens/s | forwards/answer | seconds | peak GiB | tokens = exact | speed vs exact |")
    print("|---|---|---|---|---|---|---|")
    for mode, tps, nfe, sec, peak, agree in rows:
        print(f"| {mode} | {tps:.0f} | {nfe} | {sec:.1f} | {peak:.1f} | {agree:.1%} "
              f"| {tps / rows[0][1]:.2f}x |")  # fmt: skip
    print()
    print(f"python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
