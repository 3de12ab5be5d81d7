"""tabom's sampler side by side with LLaDA's reference ``generate()`` (issue 18), one process.

The reference (:func:`reference_generate`) is the algorithm of LLaDA's ``generate.py``
(Nie et al. 2025, github ML-GSAI/LLaDA), written here for the benchmark: full ``(B, L, V)``
logits every step, Gumbel-max proposals (none at temperature 0), low-confidence remasking,
semi-autoregressive blocks with LLaDA's transfer schedule. tabom's :func:`tabom.decoding.decode`
runs the same algorithm (score ``confidence``, the same schedule) exactly (``cache none``) and
with Fast-dLLM's approximate caches (``prefix``, ``dual``). All run on the same random-weight
LLaDA-shaped model (transformers Llama class, bidirectional) and the same prompts, on one
thread; CPU time (``time.process_time``) is measured, and everything is reported as ratios to
the reference, and to the floor: one forward *per committed token* at the model's FLOPs
(2 x non-embedding parameters + the head's 2 d V + attention's 4 L d per layer, per token),
converted to seconds with the machine's measured matmul rate on one thread.

    python benchmarks/bench_sampler.py                 # the docs/benchmarks.md table
    python benchmarks/bench_sampler.py --layers 2 --vocab 32000 --gen-length 32   # quick
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
import torch.nn.functional as F

from tabom.decoding import DecodeConfig, decode, pad_prompts
from tabom.models.base import BackendSpec, DiffusionLM, make_bidirectional

# --------------------------------------------------------------------- the reference algorithm


def add_gumbel_noise(logits: torch.Tensor, temperature: float, generator=None) -> torch.Tensor:
    """LLaDA's Gumbel-max in its exponential form, in float64 (the identity at temperature 0)."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand(logits.shape, dtype=torch.float64, generator=generator)
    return logits.exp() / (-torch.log(noise)) ** temperature


def num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """``(B, steps)`` tokens committed per step: an even split, the remainder first."""
    n = mask_index.sum(dim=1, keepdim=True)
    out = torch.zeros(n.shape[0], steps, dtype=torch.long) + n // steps
    for i in range(n.shape[0]):
        out[i, : int(n[i] % steps)] += 1
    return out


@torch.no_grad()
def reference_generate(
    model,
    prompt: torch.Tensor,
    *,
    steps: int,
    gen_length: int,
    block_length: int,
    mask_id: int,
    temperature: float = 0.0,
    generator=None,
) -> tuple[torch.Tensor, int]:
    """LLaDA's ``generate`` (no classifier-free guidance, low-confidence remasking).

    Returns:
        ``(x (B, P + T), forwards)``.
    """
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    n_blocks = gen_length // block_length
    per_block = steps // n_blocks
    forwards = 0
    for nb in range(n_blocks):
        lo, hi = P + nb * block_length, P + (nb + 1) * block_length
        schedule = num_transfer_tokens(x[:, lo:hi] == mask_id, per_block)
        for i in range(per_block):
            mask_index = x == mask_id
            logits = model(x)  # (B, L, V) full logits
            forwards += 1
            x0 = torch.argmax(add_gumbel_noise(logits, temperature, generator), dim=-1)
            p = F.softmax(logits, dim=-1)
            x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)  # (B, L)
            x0_p[:, hi:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, float("-inf"))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(B):
                _, index = torch.topk(confidence[j], k=int(schedule[j, i]))
                transfer[j, index] = True
            x[transfer] = x0[transfer]
    return x, forwards


# --------------------------------------------------------------------- model and floor


def build_model(
    d: int,
    layers: int,
    heads: int,
    inter: int,
    vocab: int,
    seed: int,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DiffusionLM:
    """A random LLaDA-shaped bidirectional Llama (untied head) as a tabom model, built on
    ``device`` in ``dtype`` (no fp32 copy on the host)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        is_causal=False,
        use_cache=False,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = make_bidirectional(LlamaForCausalLM(cfg)).eval()
    finally:
        torch.set_default_dtype(default)
    spec = BackendSpec(
        name="bench-llada",
        mask_token_id=vocab - 2,
        shift_logits=False,
        eos_token_id=vocab - 3,
        pad_token_id=vocab - 1,
        attention="4d",
    )
    return DiffusionLM(model=model, tokenizer=None, spec=spec)


def matmul_rate(d: int, seconds: float = 2.0) -> float:
    """FLOP/s of this thread on the model's largest GEMM shape (512 tokens x d x 4d)."""
    a, b = torch.randn(512, d), torch.randn(d, 4 * d)
    a @ b
    n, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        a @ b
        n += 1
    return n * 2 * 512 * d * 4 * d / (time.process_time() - t0)


def flops_per_token(model, context: int) -> float:
    """One token's forward at ``context`` positions: 2 x non-embedding params + head + attention."""
    cfg = model.config
    emb = cfg.vocab_size * cfg.hidden_size
    params = sum(p.numel() for p in model.parameters()) - 2 * emb
    return 2 * params + 2 * emb + 4 * context * cfg.hidden_size * cfg.num_hidden_layers


# --------------------------------------------------------------------- the comparison


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--inter", type=int, default=1376)
    ap.add_argument("--vocab", type=int, default=126464)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-length", type=int, default=64)
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="default: gen-length (1 token/step)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = args.steps or args.gen_length
    dlm = build_model(args.d, args.layers, args.heads, args.inter, args.vocab, args.seed)
    mask = dlm.mask_token_id
    g = torch.Generator().manual_seed(args.seed)
    prompts = torch.randint(0, args.vocab - 3, (args.batch, args.prompt_length), generator=g)
    B, T = args.batch, args.gen_length
    L = args.prompt_length + T

    def ref_model(x: torch.Tensor) -> torch.Tensor:
        logits = dlm(x)  # (B, L, V), no padding
        logits[..., mask] = float("-inf")  # as tabom: [MASK] is never proposed
        return logits

    rows = []
    t0 = time.process_time()
    w0 = time.perf_counter()
    ref_x, ref_fwd = reference_generate(
        ref_model, prompts, steps=steps, gen_length=T, block_length=args.block_length,
        mask_id=mask, temperature=args.temperature, generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    rows.append(("reference generate()", time.process_time() - t0, time.perf_counter() - w0,
                 ref_fwd, float(L), ref_x[:, -T:]))  # fmt: skip
    ids, pmask = pad_prompts(prompts.tolist(), dlm.spec.pad_token_id)
    for mode in ("none", "prefix", "dual"):
        cfg = DecodeConfig(
            gen_length=T, steps=steps, block_length=args.block_length, score="confidence",
            temperature=args.temperature, cache=mode,
        )  # fmt: skip
        columns = []
        hidden_states = dlm.hidden_states

        def counting(input_ids, attention_mask=None, *, _c=columns, _h=hidden_states, **kw):
            _c.append(input_ids.numel())
            return _h(input_ids, attention_mask, **kw)

        dlm.hidden_states = counting
        t0, w0 = time.process_time(), time.perf_counter()
        out = decode(dlm, ids, pmask, cfg, mask_token_id=mask,
                     generator=torch.Generator().manual_seed(1))  # fmt: skip
        cpu, wall = time.process_time() - t0, time.perf_counter() - w0
        del dlm.hidden_states
        name = "tabom exact (cache none)" if mode == "none" else f"tabom cache {mode}"
        rows.append((name, cpu, wall, len(columns), sum(columns) / B / steps, out.response_ids))

    rate = matmul_rate(args.d)
    floor = T * B * flops_per_token(dlm.model, L) / rate  # seconds: one forward per token
    ref_cpu = rows[0][1]
    print(f"model: random LLaDA-shaped Llama, d {args.d}, {args.layers} layers, {args.heads} "
          f"heads, MLP {args.inter}, V {args.vocab}; batch {B}, prompt {args.prompt_length}, "
          f"response {T}, block {args.block_length}, {steps} steps, temperature "
          f"{args.temperature}; one thread on {platform.processor() or platform.machine()}, "
          f"matmul rate {rate / 1e9:.1f} GFLOP/s; floor (one forward per committed token) "
          f"{floor:.2f} s CPU")  # fmt: skip
    print()
    print("| sampler | CPU s | wall s | tokens/s (CPU) | forwards/answer | columns/step "
          "| CPU vs reference | x floor | tokens = reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, cpu, wall, fwd, cols, resp in rows:
        agree = (resp == rows[0][5]).float().mean().item()
        print(f"| {name} | {cpu:.1f} | {wall:.1f} | {B * T / cpu:.1f} | {fwd} | {cols:.0f} "
              f"| {ref_cpu / cpu:.2f}x faster | {cpu / floor:.1f} | {agree:.1%} |")  # fmt: skip
    print()
    print("columns/step: sequence positions run per answer and step (the reference and "
          f"the exact sampler run all {L})")
    print(f"python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
