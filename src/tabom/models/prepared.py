"""The module that ``accelerator.prepare`` gets, and its caller's view (DESIGN §7b; issue 16).

DDP, FSDP1, FSDP2 and DeepSpeed ZeRO-3 gather (and reduce) a prepared module's parameters
around its ``forward`` only. :class:`HeadForward` puts the network and its LM head at chosen
rows (the CE and entropy terms, chunked or not, or the logits) in that one forward;
:class:`PreparedLM` is the :class:`~tabom.models.base.DiffusionLM` that training and the
periodic eval call, each call one forward of the prepared module, reading no parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tabom.models.base import BackendSpec, DiffusionLM, unwrap_model


class HeadForward(torch.nn.Module):
    """The module given to ``accelerator.prepare``: the network and its LM head in one forward.

    DDP, FSDP1, FSDP2 and DeepSpeed ZeRO-3 gather (and reduce) a prepared module's parameters
    around its ``forward`` only, so everything that reads a parameter runs in here: the
    network to its final hidden states, then the head at the chosen rows only, and the CE and
    entropy terms (chunked or not) or the logits (DESIGN §7b). Nothing outside reads a
    parameter of the prepared model (:class:`PreparedLM` is its caller's view).

    Attributes:
        model: the Hugging Face network (a peft model under LoRA); its parameter names are
            this module's with the prefix ``model.``.
        spec: its :class:`BackendSpec` (shift, attention form, head at positions).
    """

    def __init__(self, model: torch.nn.Module, spec: BackendSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        chunk: int = 0,
        entropy: bool = True,
        planner_mask_id: int | None = None,
    ) -> Any:
        """Aligned logits, or the loss terms at chosen pairs, from one forward.

        Args:
            input_ids, attention_mask: ``(B, L)``, as :class:`DiffusionLM` takes them.
            rows, positions: ``(N,)`` pairs; ``None``: the whole ``(B, L, V)`` aligned logits.
            targets: ``(N,)`` clean ids: return ``(ce, h, log_c)`` (:func:`tabom.head.row_terms`);
                ``None``: the ``(N, V)`` aligned logits at the pairs.
            chunk, entropy, planner_mask_id: as :func:`tabom.head.row_terms`.
        """
        dlm = DiffusionLM(model=self.model, tokenizer=None, spec=self.spec)
        if rows is None:
            return dlm(input_ids, attention_mask)
        if targets is None:
            return dlm.logits_at(dlm.hidden_states(input_ids, attention_mask), rows, positions)
        return dlm.loss_terms(
            input_ids,
            attention_mask,
            rows,
            positions,
            targets,
            chunk=chunk,
            entropy=entropy,
            planner_mask_id=planner_mask_id,
        )


@dataclass
class PreparedLM(DiffusionLM):
    """A :class:`DiffusionLM` whose ``model`` is a prepared :class:`HeadForward` (DDP, FSDP,
    DeepSpeed): every call is one forward of that module, and no parameter is read outside it.

    Its "hidden states" are the whole aligned logits (the head runs inside the forward) and
    its head the identity, so decoding (the periodic eval of ``tabom train``) works unchanged
    under every engine; training calls :meth:`loss_terms`, the head at the supervised rows
    only, inside the forward.
    """

    device_: torch.device | None = None

    @property
    def device(self) -> torch.device:
        return self.device_ if self.device_ is not None else torch.device("cpu")

    def _network(self) -> Any:
        model = unwrap_model(self.model)  # the HeadForward under DDP / FSDP1 / DeepSpeed
        return DiffusionLM(model=model.model, tokenizer=None, spec=self.spec)._network()

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model(input_ids, attention_mask)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model(input_ids, attention_mask)  # (B, L, V), already aligned

    def gather_hidden(
        self, hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        return hidden[rows, positions]

    def apply_head(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        return hidden_rows

    def linear_head(self) -> None:
        return None

    def pair_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        rows: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """``(N, V)`` aligned logits at the pairs, the head applied inside the forward."""
        return self.model(input_ids, attention_mask, rows, positions)

    def loss_terms(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        rows: torch.Tensor,
        positions: torch.Tensor,
        targets: torch.Tensor,
        *,
        chunk: int = 0,
        entropy: bool = True,
        planner_mask_id: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return self.model(
            input_ids,
            attention_mask,
            rows,
            positions,
            targets,
            chunk=chunk,
            entropy=entropy,
            planner_mask_id=planner_mask_id,
        )


__all__ = ["HeadForward", "PreparedLM"]
