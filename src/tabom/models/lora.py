"""LoRA through peft (DESIGN §2): wrap a backend's model with adapters, merge a saved adapter.

peft is a core dependency; the import stays inside the functions so that importing
:mod:`tabom.models` does not pay for it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch.nn import Linear

from tabom.errors import TabomError
from tabom.models.base import DiffusionLM


def with_lora(
    model: Any, *, rank: int, alpha: float, dropout: float, targets: list[str] | tuple[str, ...]
) -> Any:
    """``model`` wrapped by peft with LoRA adapters on ``targets``; only the adapters train.

    Args:
        model: the backend's ``torch.nn.Module``.
        rank: r (> 0).
        alpha: α (the update is scaled by α / r).
        dropout: dropout on the LoRA input.
        targets: module names that get adapters (a backend's ``spec.lora_targets``).

    Raises:
        TabomError: a target names no module of ``model`` (lists its linear layers).
    """
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, Linear)}
        )
        raise TabomError(
            f"lora_targets: no module named {', '.join(map(repr, missing))} in the model "
            f"(its linear layers: {', '.join(linear)})"
        )
    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        bias="none",
    )
    with warnings.catch_warnings():  # peft asks a deprecated transformers property
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)
        return get_peft_model(model, lora)


def merge_adapter(dlm: DiffusionLM, adapter: str | Path) -> DiffusionLM:
    """``dlm`` with the peft LoRA adapter folder ``adapter`` merged into its weights.

    Raises:
        FileNotFoundError: no such folder (names ``adapter``).
        TabomError: the folder is not a peft adapter.
    """
    from peft import PeftModel

    if not Path(adapter).is_dir():
        raise FileNotFoundError(f"adapter: no such folder {adapter}")
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise TabomError(f"adapter: {adapter} holds no adapter_config.json (not a peft adapter)")
    merged = PeftModel.from_pretrained(dlm.model, str(adapter)).merge_and_unload()
    merged.eval()
    return DiffusionLM(merged, dlm.tokenizer, dlm.spec, dlm.extra)


__all__ = ["merge_adapter", "with_lora"]
