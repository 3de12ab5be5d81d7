"""The training engine that ``accelerate launch`` asked for, and nothing else (DESIGN §6, §7b).

``accelerate launch --config_file configs/accelerate/<engine>.yaml`` tells the processes which
engine to run through environment variables (``ACCELERATE_USE_FSDP``,
``ACCELERATE_USE_DEEPSPEED``). Accelerate honours them only on a GPU: on a CPU it quietly
builds a DDP-like ``MULTI_CPU`` state. :func:`make_accelerator` builds the engine asked for on
either device (on a CPU: gloo, ``torch.device("cpu")``, FSDP1 / FSDP2 / DeepSpeed ZeRO over
it), and refuses with :class:`EngineError` whatever it cannot build, so a sharded config is
never replaced by DDP in silence. :func:`describe` is the line ``tabom train`` prints (the
engine, processes and sharding it runs); :func:`full_state_dict` gathers the whole trained
model from the shards (a collective: every process calls it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from tabom.errors import TabomError


class EngineError(TabomError):
    """The engine the launch config asks for cannot run here (names the setting)."""


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def requested_engine() -> str:
    """``fsdp``, ``deepspeed`` or ``ddp`` (plain data parallel, or one process): what the
    launcher's environment asks for."""
    if _env_true("ACCELERATE_USE_FSDP"):
        return "fsdp"
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    return "ddp"


def make_accelerator(*, batch_size: int, grad_clip: float, **kwargs: Any) -> Any:
    """An ``accelerate.Accelerator`` running the engine the launcher asked for.

    On a machine without CUDA a sharded request is built on the CPU (gloo): accelerate's
    process state is made first with ``cpu=True`` (gloo, the CPU device) and then told it is
    multi-device, so its own FSDP / DeepSpeed set-up runs unchanged; the model, the collectives
    and every tensor stay on the CPU. DeepSpeed gets the micro-batch, accumulation and clipping
    of the run (tabom prepares no dataloader to infer them from).

    Args:
        batch_size: sequences per micro-batch per process (DeepSpeed's
            ``train_micro_batch_size_per_gpu``).
        grad_clip: max gradient norm, 0 = off (DeepSpeed clips inside its step).
        kwargs: ``Accelerator`` keywords; ``gradient_accumulation_steps`` is also DeepSpeed's.

    Raises:
        EngineError: the engine asked for is not the one accelerate built, or FSDP1 without
            ``fsdp_use_orig_params`` (names the config field).
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType

    want = requested_engine()
    on_cpu = not torch.cuda.is_available()
    if want != "ddp" and on_cpu:
        if PartialState._shared_state == {}:
            PartialState(cpu=True)  # gloo on the CPU
        state = PartialState._shared_state
        state["device"] = torch.device("cpu")  # not "cpu:0": FSDP1 compares it with the params'
        if want == "fsdp" and state.get("distributed_type") == DistributedType.MULTI_CPU:
            state["distributed_type"] = DistributedType.MULTI_GPU  # so accelerate wraps in FSDP
    accelerator = Accelerator(cpu=on_cpu and want == "ddp", **kwargs)
    got = accelerator.distributed_type
    expected = {"fsdp": DistributedType.FSDP, "deepspeed": DistributedType.DEEPSPEED}.get(want)
    if expected is not None and got != expected:
        raise EngineError(
            f"accelerate launch config: distributed_type {want.upper()} was asked for, but "
            f"accelerate set up {got.value} on {accelerator.device} with "
            f"{accelerator.num_processes} process(es); refusing to train with another engine "
            "(launch with the config's num_processes >= 2, or use multi_gpu_ddp.yaml)"
        )
    fsdp1 = got == DistributedType.FSDP and not accelerator.is_fsdp2
    if fsdp1 and not accelerator.state.fsdp_plugin.use_orig_params:
        raise EngineError(
            "accelerate launch config: fsdp_config.fsdp_use_orig_params false is not "
            "supported with fsdp_version 1 (the optimizer's parameter groups, LoRA's "
            "frozen/trainable mix and the checkpoint names need the original parameters); "
            "set fsdp_use_orig_params: true, or use fsdp_version: 2 (configs/accelerate/"
            "fsdp.yaml)"
        )
    if got == DistributedType.DEEPSPEED:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        accum = kwargs.get("gradient_accumulation_steps", 1)
        ds["train_micro_batch_size_per_gpu"] = batch_size
        ds["gradient_accumulation_steps"] = accum
        ds["train_batch_size"] = batch_size * accum * accelerator.num_processes
        ds["gradient_clipping"] = grad_clip
    return accelerator


def describe(accelerator: Any) -> str:
    """What runs: the engine, its sharding, the process count and the device, in one line."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    n = accelerator.num_processes
    where = f"{n} process{'es' if n > 1 else ''} on {accelerator.device.type}"
    if kind == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        if accelerator.is_fsdp2:
            shard = "reshard after forward" if plugin.reshard_after_forward else "no reshard"
            return f"FSDP2 (fully_shard: parameters, gradients, optimizer state; {shard}), {where}"
        strategy = getattr(plugin.sharding_strategy, "name", plugin.sharding_strategy)
        return f"FSDP1 ({strategy}, use_orig_params), {where}"
    if kind == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        what = {0: "nothing", 1: "optimizer state", 2: "optimizer state, gradients"}
        shards = what.get(stage, "optimizer state, gradients, parameters")
        return f"DeepSpeed ZeRO-{stage} (sharded: {shards}), {where}"
    if n > 1:
        return f"DDP (no sharding: a whole model per process), {where}"
    return f"one process (no sharding), on {accelerator.device.type}"


def is_sharded(accelerator: Any) -> bool:
    """Whether the prepared model's modules may hold parameter shards (FSDP, DeepSpeed)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def full_state_dict(accelerator: Any, model: Any) -> dict[str, torch.Tensor]:
    """The whole state dict of a prepared model, on the main process (others: may be empty).

    A collective: every process must call it. FSDP1 / FSDP2 through
    ``torch.distributed.checkpoint``'s full state dict (offloaded to the CPU on a GPU; on a
    CPU the offload path of FSDP1 crashes, and the tensors are there already); DeepSpeed ZeRO-3
    one parameter at a time (``GatheredParameters``: at most one whole parameter beyond the
    shards), in the training dtype; other engines: the unwrapped model's own state dict.
    Names are the unwrapped model's.
    """
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        offload = accelerator.device.type != "cpu"
        options = StateDictOptions(full_state_dict=True, cpu_offload=offload)
        return get_model_state_dict(model, options=options)
    if kind == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        import deepspeed

        inner = accelerator.unwrap_model(model)
        keep = set(inner.state_dict())  # persistent names only (not rotary caches)
        out: dict[str, torch.Tensor] = {}
        for name, p in inner.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                if accelerator.is_main_process and name in keep:
                    out[name] = p.detach().cpu().clone()
        for name, b in inner.named_buffers():
            if accelerator.is_main_process and name in keep:
                out[name] = b.detach().cpu().clone()
        return out
    inner = accelerator.unwrap_model(model)
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}


@contextlib.contextmanager
def without_zero3_init() -> Iterator[None]:
    """A context in which ``from_pretrained`` builds a whole model in this process alone.

    Under ZeRO-3 accelerate registers its DeepSpeed config with transformers, which then
    builds every model partitioned (``deepspeed.zero.Init``: a broadcast per parameter, a
    collective that only the main process would join: a hang), whatever ``zero3_init_flag``
    says. The registration is lifted for the context and restored after it.
    """
    try:
        from transformers.integrations import deepspeed as hf_ds
    except ImportError:  # no DeepSpeed integration: nothing registered
        yield
        return
    ref = getattr(hf_ds, "_hf_deepspeed_config_weak_ref", None)
    held = ref() if ref is not None else None
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if held is not None:
            hf_ds.set_hf_deepspeed_config(held)


__all__ = [
    "EngineError",
    "describe",
    "full_state_dict",
    "is_sharded",
    "make_accelerator",
    "requested_engine",
    "without_zero3_init",
]
