"""The one interface every backend provides to decoding, training and evaluation (DESIGN §2).

Backends differ by data, not by code paths: a :class:`BackendSpec` holds the mask id, whether
logits are shifted by one position (Dream), how padding reaches attention (a 2-D mask, or
Dream's 4-D mask in which pad queries attend to themselves), whether position ids are passed,
whether prompts go through the chat template, the special ids and the default LoRA targets.
:class:`DiffusionLM` turns any Hugging Face model into ``(input_ids, attention_mask) -> logits``
already aligned so that ``logits[:, j]`` predicts token ``j``, and
:meth:`DiffusionLM.encode_prompt` turns a user prompt into the ids the model is conditioned on.
For training and decoding it also runs to the final hidden states and applies the head at
chosen ``(row, position)`` pairs only (:meth:`DiffusionLM.hidden_states`,
:meth:`DiffusionLM.logits_at`; the :class:`tabom.head.HeadModel` protocol), honouring the shift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tabom.head import row_terms

BACKEND_FILE = "tabom_backend.json"
"""The file that names a saved model's backend (written by :func:`write_model_files`)."""

AttentionKind = Literal["2d", "4d-self-pad", "4d"]

@dataclass(frozen=True)
class BackendSpec:
    """What a sampler or trainer needs to know about a model family (resolved per checkpoint).

    Attributes:
        name: backend name (``tiny``, ``tiny-dream``, ``llada``, ``dream``, ``hf-mlm``).
        mask_token_id: id of the [MASK] token.
        shift_logits: Dream-style models predict token j from position j-1; the wrapper
            realigns them (aligned[:, 0] = raw[:, 0], aligned[:, j] = raw[:, j-1]).
        eos_token_id: end-of-sequence id (the model fills the unused tail with it).
        pad_token_id: padding id (left padding for batched prompts).
        lora_targets: default LoRA target module names.
        attention: how the padding mask reaches the network: ``2d`` passes the ``(B, L)``
            mask as is; ``4d-self-pad`` builds Dream's ``(B, 1, L, L)`` mask in which every
            query attends to the real tokens and a pad query to itself only (never an
            all-masked row, which gives NaN), and passes none when nothing is padded.
        position_ids: pass position ids counted from the first real token (``cumsum(mask) -
            1``); false for networks whose forward takes none (LLaDA's).
        chat_template: prompts go through the tokenizer's chat template (one user turn and
            the assistant header) before tokenisation.
        prompt_special_tokens: without a chat template, tokenise prompts with the tokenizer's
            special tokens (BERT's ``[CLS] ... [SEP]``); false = the bare text.
        stop_token_ids: ids besides EOS that end an answer (LLaDA's ``<|eot_id|>``, Dream's
            ``<|im_end|>``): the response text is cut at the first of any of them.
        head_at_positions: the network computes its logits with its output-embeddings module
            (``get_output_embeddings()``) followed by at most a linear rescaling, so the head
            can be applied at chosen positions only (:meth:`DiffusionLM.hidden_states`). False
            for remote code, which may compute logits otherwise (LLaDA's tied head): its
            "hidden states" are then the raw logits and its head the identity (same results,
            no saving). A network without output embeddings is treated the same way.
    """

    name: str
    mask_token_id: int
    shift_logits: bool
    eos_token_id: int
    pad_token_id: int
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    attention: AttentionKind = "2d"
    position_ids: bool = True
    chat_template: bool = False
    prompt_special_tokens: bool = False
    stop_token_ids: tuple[int, ...] = ()
    head_at_positions: bool = True

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """EOS followed by the other ids that end an answer (what ``response_text`` cuts at)."""
        return (self.eos_token_id, *(t for t in self.stop_token_ids if t != self.eos_token_id))


def align_logits(raw: torch.Tensor, shift: bool) -> torch.Tensor:
    """Realign shifted logits so position j predicts token j.

    Args:
        raw: ``(B, L, V)`` logits as the network returns them.
        shift: whether the network predicts token j at position j-1 (Dream).

    Returns:
        ``(B, L, V)`` logits with ``out[:, 0] = raw[:, 0]`` and ``out[:, j] = raw[:, j-1]``
        when ``shift`` is set, else ``raw`` itself.
    """
    if not shift:
        return raw
    return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)


def source_positions(positions: torch.Tensor, shift: bool) -> torch.Tensor:
    """Where the aligned logits at ``positions`` come from in the network's raw output.

    ``positions`` itself, or ``max(positions - 1, 0)`` with the shift (aligned[:, 0] =
    raw[:, 0], aligned[:, j] = raw[:, j-1]; the same rule as :func:`align_logits`).
    """
    return (positions - 1).clamp(min=0) if shift else positions


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on the first real token of each left-padded row."""
    pos = attention_mask.long().cumsum(-1) - 1  # (B, L)
    return pos.clamp(min=0)


def self_pad_attention_mask(
    attention_mask: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Dream's 4-D attention mask for a left-padded batch, with pad queries attending to themselves.

    Every query attends to the real tokens of its row; a pad query attends to itself only, so
    no row of the mask is empty (an all-masked softmax row is NaN in SDPA). Real tokens never
    see a pad token, so a row's outputs do not depend on its padding.

    Args:
        attention_mask: ``(B, L)``, 1 on real tokens, 0 on padding.
        dtype: ``None`` for a boolean mask (True = attend; what SDPA takes); a float dtype for
            an additive mask (0 = attend, the dtype's minimum = blocked; what eager attention
            adds to its scores).

    Returns:
        ``(B, 1, L, L)`` mask indexed ``[batch, 1, query, key]``.
    """
    keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
    L = attention_mask.shape[-1]
    eye = torch.eye(L, dtype=torch.bool, device=attention_mask.device)[None, None]  # (1, 1, L, L)
    allowed = keys | eye  # (B, 1, L, L)
    if dtype is None:
        return allowed
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return blocked.masked_fill(~allowed, torch.finfo(dtype).min)


def make_bidirectional(model: Any) -> Any:
    """Turn off causal attention in a transformers Llama / Qwen2 model, on any version.

    transformers 5 builds a bidirectional mask from ``config.is_causal = False``; 4.x ignores
    that field and lets SDPA apply a causal mask whenever it gets no mask (its attention
    modules carry ``is_causal = True``). Setting both makes a model without a mask
    bidirectional on either; with padding, the backends pass their own 4-D mask, which both
    versions use as is.

    Returns:
        ``model``.
    """
    model.config.is_causal = False
    for module in model.modules():
        if isinstance(getattr(module, "is_causal", None), bool):
            module.is_causal = False
    return model


def unwrap_model(model: Any) -> Any:
    """The module under ``accelerator.prepare``'s wrappers (DDP, FSDP1, DeepSpeed), by
    accelerate's own rule (:func:`accelerate.utils.extract_model_from_parallel`).

    An unwrapped model is returned as is without importing accelerate (nor, through it,
    deepspeed): decoding calls this at every forward.
    """
    if not hasattr(model, "module"):  # every wrapper holds its model as ``.module``
        return model
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each decoder layer's activations in backward instead of storing them.

    Works on a transformers model or a peft wrapper of one (the native Llama / Qwen2 classes
    of every llada / dream / tiny backend); non-reentrant checkpointing, so a frozen base with
    LoRA adapters needs no input gradients. Active in train mode only.

    Raises:
        ValueError: the model does not support gradient checkpointing (names its class).
    """
    inner = unwrap_model(model)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"gradient_checkpointing: {type(base).__name__} does not support it (the native "
            "llada / dream backends do; remote code may not)"
        )
    base.config.use_cache = False
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x's name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@dataclass
class DiffusionLM:
    """A bidirectional Hugging Face model, its tokenizer and its backend data.

    Call it like a function: ``dlm(input_ids, attention_mask)`` returns aligned logits
    ``(B, L, V)``; or ``h = dlm.hidden_states(input_ids, attention_mask)`` then
    ``dlm.logits_at(h, rows, positions)`` for the ``(N, V)`` aligned logits at N pairs only. Left-padded batches get position ids counted from the first real token (when
    the network takes them) and the padding mask in the form the backend needs, so a row
    decodes the same alone or in a padded batch.
    """

    model: Any
    tokenizer: Any
    spec: BackendSpec
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mask_token_id(self) -> int:
        return self.spec.mask_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        """The width of the logits, read from the network's config or its head's declared
        size (never a parameter: under FSDP / ZeRO-3 a prepared parameter is a shard)."""
        network = self._network()
        head = network.get_output_embeddings() if hasattr(network, "get_output_embeddings") else None
        size = getattr(head, "out_features", None) or getattr(head, "num_embeddings", None)
        if size is None:
            size = getattr(network.config, "vocab_size", None)
        if size is None:  # an unprepared model without either: its head's weight
            size = head.weight.shape[0]
        return int(size)

    def encode_prompt(self, text: str) -> list[int]:
        """The ids a user prompt conditions the model on (what ``prompt_token_ids`` records).

        With a chat template (``spec.chat_template``) the prompt is one user turn followed by
        the assistant header (``add_generation_prompt=True``; LLaDA's template appends the
        header in any case), rendered to text and tokenised without adding special tokens (the
        template holds them). Otherwise the bare text, with special tokens only when
        ``spec.prompt_special_tokens`` is set (the tiny backends: exactly one id per character).

        Args:
            text: the user prompt, before any template.

        Returns:
            Token ids, no padding.
        """
        tok = self.tokenizer
        if self.spec.chat_template:
            messages = [{"role": "user", "content": text}]
            rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(tok(rendered, add_special_tokens=False)["input_ids"])
        return list(tok(text, add_special_tokens=self.spec.prompt_special_tokens)["input_ids"])

    def _mask_dtype(self) -> torch.dtype | None:
        """Boolean 4-D masks for SDPA-style attention; additive float ones for eager attention."""
        model = unwrap_model(self.model)
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if impl != "eager":
            return None
        return model.get_input_embeddings().weight.dtype

    def _forward_kwargs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> dict[str, Any]:
        """Position ids and the padding mask in the form the backend needs."""
        kwargs: dict[str, Any] = {}
        if attention_mask is not None:
            if self.spec.position_ids:
                kwargs["position_ids"] = position_ids_from_mask(attention_mask)
            if self.spec.attention == "2d":
                kwargs["attention_mask"] = attention_mask
            elif self.spec.attention == "4d" or not bool(attention_mask.all()):
                # "4d-self-pad": 4-D only with padding (Dream's remote code: "full")
                kwargs["attention_mask"] = self_pad_attention_mask(
                    attention_mask, self._mask_dtype()
                )
        elif self.spec.attention == "4d":
            kwargs["attention_mask"] = self_pad_attention_mask(
                torch.ones_like(input_ids), self._mask_dtype()
            )
        return kwargs

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Aligned logits ``(B, L, V)`` for ``input_ids`` ``(B, L)``.

        Args:
            input_ids: ``(B, L)`` token ids, left-padded.
            attention_mask: ``(B, L)`` 1 on real tokens, 0 on padding (``None``: no padding).
        """
        raw = self.model(
            input_ids=input_ids, **self._forward_kwargs(input_ids, attention_mask)
        ).logits
        return align_logits(raw, self.spec.shift_logits)  # (B, L, V)

    def _network(self) -> Any:
        """The Hugging Face model under DDP / FSDP (``.module``) and peft wrappers."""
        model = unwrap_model(self.model)
        if hasattr(model, "get_base_model"):  # peft
            model = model.get_base_model()
        return model

    def _head_slot(self) -> tuple[Any, str, torch.nn.Module] | None:
        """``(parent, attribute, module)`` of the network's output embeddings, or ``None``.

        ``None`` (the head is not separable: hidden states are the raw logits, the head the
        identity) when ``spec.head_at_positions`` is false or the network has no output
        embeddings module (a plain ``nn.Module`` returning logits).
        """
        if not self.spec.head_at_positions:
            return None
        network = self._network()
        get = getattr(network, "get_output_embeddings", None)
        head = get() if get is not None else None
        if head is None:
            return None
        for name, module in network.named_modules(remove_duplicate=False):
            if module is head:
                parent_name, _, attr = name.rpartition(".")
                return network.get_submodule(parent_name), attr, head
        raise ValueError(f"backend {self.spec.name}: output embeddings not found among modules")

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        model_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """What the LM head takes, ``(B, L, H)``, from one forward of the (wrapped) model.

        The whole forward runs through ``self.model`` (so DDP, peft and autocast wrappers see
        it) with the output-embeddings module replaced by the identity for its duration: the
        result is that module's input (the final normalised hidden state; a masked LM's
        transformed state), times any linear rescaling the network applies to its logits
        (which commutes with a bias-free head). Not shifted: :meth:`gather_hidden` applies the
        shift. With ``spec.head_at_positions`` false: the raw ``(B, L, V)`` logits.

        ``model_kwargs`` go to the network's forward as well, over the position ids and mask
        made from ``attention_mask`` (the KV cache of :mod:`tabom.kv_cache` passes its cache,
        positions and 4-D mask this way).

        Raises:
            ValueError: the network's output does not have the head's input width (it does not
                compute its logits through its output embeddings).
        """
        kwargs = {**self._forward_kwargs(input_ids, attention_mask), **(model_kwargs or {})}
        slot = self._head_slot()
        if slot is None:
            return self.model(input_ids=input_ids, **kwargs).logits  # (B, L, V) raw
        parent, attr, head = slot
        setattr(parent, attr, torch.nn.Identity())
        try:
            hidden = self.model(input_ids=input_ids, **kwargs).logits  # (B, L, H)
        finally:
            setattr(parent, attr, head)
        width = getattr(head, "in_features", None)
        if width is not None and hidden.shape[-1] != width:
            raise ValueError(
                f"backend {self.spec.name}: with its output embeddings bypassed the model "
                f"returned width {hidden.shape[-1]}, not the head's {width}; it computes its "
                "logits otherwise (set head_at_positions false in its BackendSpec)"
            )
        return hidden

    def gather_hidden(
        self, hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """``(N, H)`` hidden rows whose head output is the aligned logits at the pairs.

        Args:
            hidden: ``(B, L, H)`` from :meth:`hidden_states`.
            rows, positions: ``(N,)`` long; with the shift, position j reads hidden j - 1
                (position 0 reads itself).
        """
        return hidden[rows, source_positions(positions, self.spec.shift_logits)]

    def apply_head(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        """``(N, V)`` logits of gathered hidden rows (the output-embeddings module itself)."""
        slot = self._head_slot()
        if slot is None:
            return hidden_rows
        return slot[2](hidden_rows)

    def linear_head(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """``(weight, bias)`` of the output embeddings when the chunked loss may read them
        (:class:`tabom.head._ChunkedLinearCE`): a plain ``nn.Linear`` whose weight is a whole
        2-D tensor here. ``None`` otherwise: the identity head, a LoRA-wrapped head, an FSDP2
        unit of its own (``FSDPLinear``, a DTensor outside its forward) or a ZeRO-3 partition;
        ``loss_chunk`` then runs the head module itself chunk by chunk
        (:func:`tabom.head.ce_entropy_at`), so the engine gathers it as any layer.
        """
        slot = self._head_slot()
        if slot is None:
            return None
        head = slot[2]
        if type(head) is not torch.nn.Linear:
            return None
        weight = head.weight
        if type(weight) not in (torch.nn.Parameter, torch.Tensor) or weight.dim() != 2:
            return None  # a DTensor (FSDP2) or a flat shard
        if hasattr(weight, "ds_id"):  # DeepSpeed ZeRO-3: gathered only inside the module's call
            return None
        return weight, head.bias

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
        """One forward to the per-row CE, entropy and (PAPL) planner log-probs at the pairs
        (:func:`tabom.head.row_terms`; under ``accelerate.prepare`` the same code runs inside
        :class:`tabom.models.prepared.HeadForward`'s forward)."""
        return row_terms(
            self,
            input_ids,
            attention_mask,
            rows,
            positions,
            targets,
            chunk=chunk,
            entropy=entropy,
            planner_mask_id=planner_mask_id,
        )

    def logits_at(
        self, hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """``(N, V)`` aligned logits at ``(rows[i], positions[i])``; equal to
        ``dlm(input_ids, attention_mask)[rows, positions]`` up to float rounding of the head's
        matrix product on fewer rows.
        """
        return self.apply_head(self.gather_hidden(hidden, rows, positions))


def write_model_files(dlm: DiffusionLM, path: str | Path) -> None:
    """Write any backend's model, tokenizer and ``tabom_backend.json`` into a folder (not atomic:
    :func:`tabom.models.save_model` wraps it in a temporary folder renamed when complete).

    :func:`tabom.models.load_model` on that folder restores the same backend (the file names
    it, with the tiny model's config when there is one); remote-code models save their code
    with them (``save_pretrained``).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dlm.model.save_pretrained(path)
    dlm.tokenizer.save_pretrained(path)
    meta = {"backend": dlm.spec.name, "shift_logits": dlm.spec.shift_logits}
    if "tiny_config" in dlm.extra:
        meta["tiny_config"] = dlm.extra["tiny_config"]
    (path / BACKEND_FILE).write_text(json.dumps(meta, indent=2) + "\n")
