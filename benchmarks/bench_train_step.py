"""One optimizer step of ``tabom`` against ``traj-sft`` and ``td`` (DESIGN §5-6): the ranking cost.

Times what one step of ``tabom train`` does per micro-batch (:func:`tabom.objectives.compute_objective`:
mask, one forward, loss; backward; gradient clipping; AdamW step; zero grad) on the same model
and the same batch for each objective. ``tabom`` − ``td`` is the ranking term alone (same
time-delay masking, same CE positions); ``tabom`` / ``traj-sft`` is the comparison the issue
asks for (random masking supervises ≈ T/2 positions, time-delay masking M). Objectives are
interleaved within each repeat so that load on a shared machine hits them alike. The report
gives the process CPU time (``time.process_time``: on a shared machine it counts this
process's work, not the time other jobs hold the cores; with one thread it is the step's cost)
as median and minimum over repeats after warm-up steps, and the wall-clock median.

The model is a randomly initialised bidirectional Llama (the tiny backend's architecture) with
a real-model vocabulary, on random trajectories of one token per step. Its transformer body is
far smaller than a 7-8B model's while the (B, K, V) entropy work of the ranking term scales
with V only, so the ranking share measured here is an upper bound for LLaDA / Dream.

    python benchmarks/bench_train_step.py                        # V=32000, d=256, 2 layers, 7 repeats
    python benchmarks/bench_train_step.py --lora-rank 16
    python benchmarks/bench_train_step.py --loss-level            # the loss terms alone
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from tabom.losses import rank_loss, token_entropy
from tabom.masking import time_delay_mask
from tabom.models.base import BackendSpec, DiffusionLM
from tabom.objectives import LossConfig, compute_objective
from tabom.train_data import TrajectoryBatch

OBJECTIVES = ("traj-sft", "td", "tabom")


def build_model(
    args: argparse.Namespace, *, vocab: int | None = None, train: bool = True
) -> DiffusionLM:
    """A random bidirectional Llama with ``vocab`` (default ``args.vocab``) tokens (mask id =
    vocab - 1), LoRA when ``args.lora_rank``; ``benchmarks/bench_head.py`` builds its models
    here too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = args.vocab if vocab is None else vocab
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.prompt + args.gen,
        is_causal=False,
        use_cache=False,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if getattr(args, "lora_rank", 0):
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=args.lora_rank, lora_alpha=args.lora_rank, target_modules=["q_proj", "v_proj"]
        )
        model = get_peft_model(model, lora)
    model.train(train)
    spec = BackendSpec("bench", vocab - 1, False, eos_token_id=1, pad_token_id=0)
    return DiffusionLM(model=model, tokenizer=None, spec=spec)


def build_batch(args: argparse.Namespace, *, vocab: int | None = None) -> dict[str, torch.Tensor]:
    """Random [prompt | response] ids (``vocab``, default ``args.vocab``) and a random
    one-token-per-step decode order."""
    vocab = args.vocab if vocab is None else vocab
    g = torch.Generator().manual_seed(1)
    B, P, T = args.batch, args.prompt, args.gen
    ids = torch.randint(3, vocab - 1, (B, P + T), generator=g)
    attn = torch.ones(B, P + T, dtype=torch.long)
    resp = torch.zeros(B, P + T, dtype=torch.bool)
    resp[:, P:] = True
    order = torch.full((B, P + T), -1, dtype=torch.long)
    for b in range(B):
        order[b, P:] = torch.randperm(T, generator=g)
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp, "decoding_order": order}


def step(dlm: DiffusionLM, optimizer, batch, objective: str, args) -> tuple[float, float, dict]:
    """One optimizer step; returns its wall seconds, its process CPU seconds and the counts."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = compute_objective(
        dlm,
        TrajectoryBatch(
            batch["input_ids"],
            batch["attention_mask"],
            batch["response_mask"],
            batch["decoding_order"],
            None,
            [],
        ),
        objective=objective,
        loss=LossConfig(td_window=args.window, rank_window=args.window),
        mask_token_id=dlm.mask_token_id,
        generator=torch.Generator().manual_seed(2),
    )
    out.total.backward()
    torch.nn.utils.clip_grad_norm_([p for p in dlm.model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, {"n_supervised": out.n_supervised, "n_pairs": out.n_pairs}


def loss_level(args: argparse.Namespace) -> None:
    """Forward + backward of the loss alone on leaf fp32 logits (B, P + T, V), CPU ms.

    ``ce``: CE on the time-delay window; ``ce+rank``: plus the ranking term as implemented
    (its own gather of the window rows); ``ce+entropy-shared``: CE and the entropies of the
    supervised rows from one gather (what sharing the gather would cost).
    """
    b = build_batch(args)
    plan = time_delay_mask(
        b["input_ids"],
        b["decoding_order"],
        response_mask=b["response_mask"],
        window=args.window,
        mask_token_id=args.vocab - 1,
        generator=torch.Generator().manual_seed(2),
    )
    base = torch.randn(
        *b["input_ids"].shape, args.vocab, generator=torch.Generator().manual_seed(3)
    )
    ids, sel = b["input_ids"], plan.supervise

    def run(kind: str) -> float:
        z = base.clone().requires_grad_()
        c0 = time.process_time()
        if kind == "ce+entropy-shared":
            rows = z[sel]  # (N, V): one gather for both terms
            loss = torch.nn.functional.cross_entropy(rows, ids[sel]) + token_entropy(rows).mean()
        else:
            loss = torch.nn.functional.cross_entropy(z[sel], ids[sel])
            if kind == "ce+rank":
                entropy = torch.zeros(sel.shape).index_put(
                    sel.nonzero(as_tuple=True), token_entropy(z[sel])
                )
                loss = (
                    loss
                    + rank_loss(
                        entropy, b["decoding_order"], plan.cut, window=args.window, margin=0.1,
                        supervise=sel,
                    ).loss
                )
        loss.backward()
        return time.process_time() - c0

    kinds = ("ce", "ce+rank", "ce+entropy-shared")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(args.warmup + args.repeats):
        for k in kinds:
            t = run(k)
            if i >= args.warmup:
                times[k].append(t)
    for k in kinds:
        print(f"{k}: CPU median {statistics.median(times[k]) * 1e3:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument("--window", type=int, default=32, help="M = W, decode steps")
    parser.add_argument("--lora-rank", type=int, default=0, help="0 = full fine-tuning")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loss-level", action="store_true", help="time the loss terms alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.loss_level:
        loss_level(args)
        return

    dlm = build_model(args)
    params = [p for p in dlm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
    batch = build_batch(args)
    wall: dict[str, list[float]] = {o: [] for o in OBJECTIVES}
    cpu: dict[str, list[float]] = {o: [] for o in OBJECTIVES}
    counts: dict[str, dict] = {}
    for i in range(args.warmup + args.repeats):
        for objective in OBJECTIVES:  # interleaved: shared-machine load hits all alike
            w, c, counts[objective] = step(dlm, optimizer, batch, objective, args)
            if i >= args.warmup:
                wall[objective].append(w)
                cpu[objective].append(c)

    med = {o: statistics.median(t) * 1e3 for o, t in cpu.items()}
    n_params = sum(p.numel() for p in params)
    print(
        f"# {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
        f"{args.threads} thread(s); B={args.batch} P={args.prompt} T={args.gen} V={args.vocab} "
        f"d={args.hidden} layers={args.layers} M=W={args.window} "
        f"{'LoRA r=' + str(args.lora_rank) if args.lora_rank else 'full fine-tuning'}; "
        f"{n_params:,} trainable parameters; {args.repeats} repeats after {args.warmup} warm-up"
    )
    print("| objective | CPU median (ms) | CPU min (ms) | wall median (ms) | supervised | pairs |")
    print("|---|---:|---:|---:|---:|---:|")
    for o in OBJECTIVES:
        c = counts[o]
        print(
            f"| {o} | {med[o]:.0f} | {min(cpu[o]) * 1e3:.0f} | "
            f"{statistics.median(wall[o]) * 1e3:.0f} | {c['n_supervised']} | {c['n_pairs']} |"
        )

    def paired(a: str, b: str) -> float:  # median of per-repeat ratios (same load)
        return statistics.median(x / y for x, y in zip(cpu[a], cpu[b], strict=True))

    print(
        f"CPU time: tabom / traj-sft {med['tabom'] / med['traj-sft']:.3f} (medians), "
        f"{paired('tabom', 'traj-sft'):.3f} (paired); tabom / td (the ranking term alone) "
        f"{med['tabom'] / med['td']:.3f} (medians), {paired('tabom', 'td'):.3f} (paired)"
    )
    print(json.dumps({"cpu_median_ms": med, "args": vars(args)}))


if __name__ == "__main__":
    main()
