"""The tiny backend: bidirectional, Dream-style shift, save -> load round trip, tokenizer."""

from __future__ import annotations

import pytest
import torch

from tabom.models import TinyModelConfig, align_logits, build_tiny, load_model, save_tiny

SMALL = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_changing_a_late_token_changes_early_logits(family):
    dlm = build_tiny(TinyModelConfig(family=family, **SMALL), seed=1)
    x = torch.randint(4, 90, (1, 12))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 7) % 90 + 4
    a, b = dlm(x), dlm(y)
    # position 1 sees position 11 only through bidirectional attention (and for the
    # shifted qwen2 variant position 1 holds raw position 0's logits)
    assert (a[0, 1] - b[0, 1]).abs().max() > 1e-4


def test_causal_model_would_not_see_the_future():
    """Guard the test above: the same model with causal attention leaves early logits alone."""
    dlm = build_tiny(TinyModelConfig(**SMALL), seed=1)
    dlm.model.config.is_causal = True
    for layer in dlm.model.model.layers:
        layer.self_attn.is_causal = True
    x = torch.randint(4, 90, (1, 12))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 7) % 90 + 4
    causal = dlm.model  # the raw network: no bidirectional 4-D mask from DiffusionLM
    assert torch.allclose(causal(input_ids=x).logits[0, 1], causal(input_ids=y).logits[0, 1])


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_save_load_gives_identical_logits(tmp_path, family):
    dlm = build_tiny(TinyModelConfig(family=family, **SMALL), seed=2)
    save_tiny(dlm, tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    x = torch.randint(4, 90, (3, 10))
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    assert torch.equal(dlm(x, mask), loaded(x, mask))
    assert loaded.spec == dlm.spec
    assert loaded.spec.shift_logits == (family == "qwen2")


def test_align_logits_shifts_by_one():
    raw = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    out = align_logits(raw, True)
    assert torch.equal(out[:, 0], raw[:, 0])
    assert torch.equal(out[:, 1:], raw[:, :-1])
    assert align_logits(raw, False) is raw


def test_left_padding_does_not_change_a_row():
    dlm = build_tiny(TinyModelConfig(**SMALL), seed=3)
    x = torch.randint(4, 90, (1, 8))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], 1)
    torch.testing.assert_close(
        dlm(padded, mask)[:, 3:], dlm(x, torch.ones_like(x)), atol=1e-5, rtol=1e-5
    )


def test_char_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tiny(TinyModelConfig(**SMALL)).tokenizer
    text = "15,44,79>50:\n44-15=29 ~"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False)["input_ids"] == ids
    assert again.decode(ids) == text
    assert (again.pad_token_id, again.eos_token_id, again.mask_token_id) == (0, 1, 2)
    assert (
        tok.convert_tokens_to_ids("<unk>") == again("é", add_special_tokens=False)["input_ids"][0]
    )


def test_load_rejects_a_causal_checkpoint(tmp_path):
    dlm = build_tiny(TinyModelConfig(**SMALL))
    dlm.model.config.is_causal = True
    save_tiny(dlm, tmp_path / "m")
    with pytest.raises(ValueError, match="is_causal"):
        load_model(str(tmp_path / "m"))


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="not a shipped model"):
        load_model("no-such-model")
