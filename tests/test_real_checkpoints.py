"""Real LLaDA and Dream checkpoints, loaded natively, against their own modeling code (DESIGN §2).

The fixtures in ``shared/fixtures/real-code`` (beside the repository) are tiny random
checkpoints in each hub's own layout with the fp32 logits that the real remote code produced
(transformers 4.57.6). Here they load through ``load_model`` into transformers' Llama / Qwen2
classes, without remote code, and must match those logits within 1e-4 at real-token
positions: ``llada/`` (the mid-2025 hub file, which ignores the mask) on its unpadded cases,
``llada-masked/`` and ``dream/`` on every case including the left-padded batch. A wrong name
map, norm, rope or shift must miss them by far more.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from realdata import REAL_CODE
from tabom.models import NATIVE, export_model, load_model, save_model
from tabom.models.dream import DREAM, DREAM_NATIVE
from tabom.models.llada import LLADA, LLADA_NATIVE, LLADA_TO_NATIVE
from tabom.models.native import load_native

FIXTURES = REAL_CODE
TOL = 1e-4
FOLDERS = {  # fixture -> (backend, cases that the native class must match)
    "llada": ("llada", ("prompt", "random_10", "random_4")),  # hub file ignores the mask
    "llada-masked": ("llada", ("prompt", "random_10", "random_4", "padded_batch")),
    "dream": ("dream", ("prompt", "random_10", "random_4", "padded_batch")),
}


def fixture_diff(dlm, folder: Path, cases: tuple[str, ...]) -> float:
    """Max |aligned logits - the remote code's| over ``cases`` at real-token positions."""
    meta = json.loads((folder / "cases.json").read_text())
    saved = load_file(str(folder / "cases.safetensors"))
    worst = 0.0
    for case in meta["cases"]:
        if case["name"] not in cases:
            continue
        t = case["tensors"]
        ids, mask, raw = saved[t["input_ids"]], saved[t["attention_mask"]], saved[t["logits"]]
        keep = mask.bool().clone()
        if meta["shift_logits"]:  # Dream: align the expected values as DiffusionLM does
            raw = torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
            keep[:, 1:] &= mask[:, :-1].bool()  # a row's first real token follows a pad
        with torch.no_grad():
            got = dlm(ids, mask)
        assert not bool(torch.isnan(got).any()), (folder.name, case["name"])
        worst = max(worst, float((got[keep] - raw[keep]).abs().max()))
    return worst


@pytest.fixture(scope="module")
def loaded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fixtures' logits were made with one thread
    yield {name: load_model(str(FIXTURES / name), dtype="float32") for name in FOLDERS}
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", list(FOLDERS))
def test_native_model_matches_the_real_modeling_code(loaded, name):
    backend, cases = FOLDERS[name]
    dlm = loaded[name]
    assert dlm.spec.name == backend
    assert type(dlm.model).__name__ == NATIVE[backend].model_class
    assert dlm.model.config._attn_implementation == "sdpa" and not dlm.model.config.is_causal
    assert fixture_diff(dlm, FIXTURES / name, cases) <= TOL


def test_the_mid_2025_llada_file_differs_on_the_padded_batch(loaded):
    """The native class honours the mask, so it cannot match the hub file that ignores it."""
    assert fixture_diff(loaded["llada"], FIXTURES / "llada", ("padded_batch",)) > 0.5


@pytest.mark.parametrize("name", ["llada-masked", "dream"])
def test_a_padded_batch_equals_its_rows_alone(loaded, name):
    dlm = loaded[name]
    saved = load_file(str(FIXTURES / name / "cases.safetensors"))
    ids, mask = saved["padded_batch.input_ids"], saved["padded_batch.attention_mask"]
    with torch.no_grad():
        batch = dlm(ids, mask)
        assert bool(torch.isfinite(batch).all())  # pad queries too: never an empty row
        for row in range(ids.shape[0]):
            real = mask[row].bool()
            alone = dlm(ids[row : row + 1, real], torch.ones(1, int(real.sum()), dtype=torch.long))
            # Dream's first real token after padding is aligned from a pad position: skip it
            skip = 1 if dlm.spec.shift_logits and not bool(mask[row].all()) else 0
            diff = (batch[row, real][skip:] - alone[0, skip:]).abs().max()
            assert diff <= 1e-5, (name, row, float(diff))


@pytest.mark.parametrize("name", list(FOLDERS))
def test_special_ids_and_chat_template_come_from_the_checkpoint(loaded, name):
    meta = json.loads((FIXTURES / name / "cases.json").read_text())
    dlm = loaded[name]
    spec = dlm.spec
    assert spec.mask_token_id == meta["mask_token_id"]
    assert (spec.eos_token_id, spec.pad_token_id) == (meta["eos_token_id"], meta["pad_token_id"])
    assert spec.stop_token_ids == (meta["stop_token_id"],) and spec.chat_template
    prompt = next(c for c in meta["cases"] if c["name"] == "prompt")
    n = prompt["prompt_length"]
    assert dlm.encode_prompt("What is 7 + 5?") == prompt["input_ids"][0][:n]


def test_no_remote_code_runs(monkeypatch):
    """Loading must not import the folder's .py files, nor pass trust_remote_code=True."""
    import transformers.dynamic_module_utils as dyn

    def refuse(*args, **kwargs):
        raise AssertionError("remote code was requested")

    monkeypatch.setattr(dyn, "get_class_from_dynamic_module", refuse)
    for name in FOLDERS:
        dlm = load_model(str(FIXTURES / name), dtype="float32")
        assert "transformers_modules" not in type(dlm.model).__module__
        assert "transformers_modules" not in type(dlm.tokenizer).__module__
    assert not any("modeling_llada" in m or "modeling_dream" in m for m in sys.modules)


# --------------------------------------------------------------------------- breaking the map


def _swap(pairs: tuple[tuple[str, str], ...], a: str, b: str) -> tuple[tuple[str, str], ...]:
    """``pairs`` with the native targets of hub names ``a`` and ``b`` exchanged."""
    ia = next(i for i, (p, _) in enumerate(pairs) if rf"\.{a}\." in p)
    ib = next(i for i, (p, _) in enumerate(pairs) if rf"\.{b}\." in p)
    out = list(pairs)
    out[ia], out[ib] = (pairs[ia][0], pairs[ib][1]), (pairs[ib][0], pairs[ia][1])
    return tuple(out)


def _broken(kind: str, tmp_path: Path):
    """A deliberately wrong family (map, norm, rope, shift), and the folder it loads."""
    if kind == "swap ff_proj/up_proj":  # gate and up exchanged: same shapes, wrong SwiGLU
        return (
            dataclasses.replace(
                LLADA_NATIVE, to_native=_swap(LLADA_TO_NATIVE, "ff_proj", "up_proj")
            ),
            LLADA,
            FIXTURES / "llada-masked",
        )
    if kind == "swap attn_norm/ff_norm":  # the two RMSNorm weights of each block exchanged
        return (
            dataclasses.replace(
                LLADA_NATIVE, to_native=_swap(LLADA_TO_NATIVE, "attn_norm", "ff_norm")
            ),
            LLADA,
            FIXTURES / "llada-masked",
        )
    if kind == "dream gate/up":  # the file's tensors under each other's names
        folder = tmp_path / "dream"
        shutil.copytree(FIXTURES / "dream", folder)
        w = load_file(str(folder / "model.safetensors"))
        a, b = "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"
        w[a], w[b] = w[b], w[a]
        save_file(w, str(folder / "model.safetensors"))
        return DREAM_NATIVE, DREAM, folder
    if kind == "llada rope_theta 1e4":

        def build(hub, where):
            return LLADA_NATIVE.build_config({**hub, "rope_theta": 10000.0}, where)

        return (
            dataclasses.replace(LLADA_NATIVE, build_config=build),
            LLADA,
            FIXTURES / "llada-masked",
        )
    if kind == "dream rms_norm_eps 1e-1":

        def build(hub, where):
            return DREAM_NATIVE.build_config({**hub, "rms_norm_eps": 0.1}, where)

        return dataclasses.replace(DREAM_NATIVE, build_config=build), DREAM, FIXTURES / "dream"
    if kind == "dream unshifted":
        return DREAM_NATIVE, dataclasses.replace(DREAM, shift_logits=False), FIXTURES / "dream"
    raise ValueError(kind)


BREAKS = [
    "swap ff_proj/up_proj",
    "swap attn_norm/ff_norm",
    "dream gate/up",
    "llada rope_theta 1e4",
    "dream rms_norm_eps 1e-1",
    "dream unshifted",
]


@pytest.mark.parametrize("kind", BREAKS)
def test_a_wrong_map_norm_rope_or_shift_fails_the_parity_check(kind, tmp_path):
    family, defaults, folder = _broken(kind, tmp_path)
    dlm = load_native(folder, family, defaults, dtype=torch.float32)
    name = "dream" if "dream" in kind else "llada-masked"
    diff = fixture_diff(dlm, FIXTURES / name, FOLDERS[name][1])
    print(f"{kind}: max |diff| {diff:.3g}")  # pytest -s shows the margins
    assert diff > 100 * TOL, (kind, diff)


def test_a_map_that_leaves_a_weight_unused_is_refused():
    pairs = tuple(p for p in LLADA_TO_NATIVE if "ln_f" not in p[0])
    family = dataclasses.replace(LLADA_NATIVE, to_native=pairs)
    with pytest.raises(
        ValueError,
        match=r"\(model\.safetensors\): the llada name map does not fit.*model\.norm\.weight",
    ):
        load_native(FIXTURES / "llada", family, LLADA, dtype=torch.float32)


def test_a_config_json_that_is_not_json_is_refused_naming_the_file(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(FIXTURES / "llada", folder)
    (folder / "config.json").write_text('{"d_model": 8,\n  oops}')
    with pytest.raises(ValueError, match=r"m/config\.json: not valid JSON \(line 2\)"):
        load_native(folder, LLADA_NATIVE, LLADA, dtype=torch.float32)


def test_unsupported_llada_options_are_refused_by_field(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(FIXTURES / "llada", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "include_qkv_bias": True}))
    with pytest.raises(ValueError, match=r"config.json: include_qkv_bias = True"):
        load_model(str(folder))


# --------------------------------------------------------------------------- sharded checkpoints


def _shard(src: Path, dst: Path) -> dict[str, str]:
    """A copy of ``src`` with its weights split into two shards and an index (hub layout)."""
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    names = sorted(weights)
    files = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    weight_map = {n: files[i % 2] for i, n in enumerate(names)}
    for f in files:
        save_file({n: weights[n] for n in names if weight_map[n] == f}, str(dst / f))
    total = sum(t.numel() * t.element_size() for t in weights.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    return weight_map


@pytest.mark.parametrize("name", ["llada-masked", "dream"])
def test_sharded_checkpoint_loads_and_exports_in_its_shards(tmp_path, name):
    weight_map = _shard(FIXTURES / name, tmp_path / "hub")
    dlm = load_model(str(tmp_path / "hub"), dtype="float32")
    assert fixture_diff(dlm, FIXTURES / name, FOLDERS[name][1]) <= TOL
    export_model(dlm, tmp_path / "out")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == weight_map
    for f in set(weight_map.values()):
        a, b = load_file(str(tmp_path / "out" / f)), load_file(str(tmp_path / "hub" / f))
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- save and export


@pytest.mark.parametrize("name", ["llada-masked", "dream"])
def test_save_reload_and_export_round_trip(tmp_path, name):
    dlm = load_model(str(FIXTURES / name), dtype="float32")  # its own copy: weights change
    with torch.no_grad():  # a "trained" model: one weight moved
        dlm.model.model.layers[0].self_attn.v_proj.weight.add_(0.01)
    save_model(dlm, tmp_path / "saved")
    again = load_model(str(tmp_path / "saved"))
    assert again.spec == dlm.spec and again.extra["native_family"] == NATIVE[dlm.spec.name].name
    saved = load_file(str(FIXTURES / name / "cases.safetensors"))
    ids, mask = saved["padded_batch.input_ids"], saved["padded_batch.attention_mask"]
    with torch.no_grad():
        assert torch.equal(again(ids, mask), dlm(ids, mask))
    text = "What is 7 + 5?"
    assert again.encode_prompt(text) == dlm.encode_prompt(text)
    # export the saved (trained) model: the hub's names, files and config.json as it was
    export_model(again, tmp_path / "hub")
    out = load_file(str(tmp_path / "hub" / "model.safetensors"))
    ref = load_file(str(FIXTURES / name / "model.safetensors"))
    assert sorted(out) == sorted(ref)
    moved = [k for k in ref if not torch.equal(out[k], ref[k])]
    llada = "llada" in name
    v_name = f"model.{'transformer.blocks' if llada else 'layers'}.0.{'' if llada else 'self_attn.'}v_proj.weight"
    assert moved == [v_name]
    torch.testing.assert_close(out[v_name], ref[v_name] + 0.01, rtol=0, atol=0)
    for f in ("config.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "hub" / f).read_bytes() == (FIXTURES / name / f).read_bytes()
    assert not list((tmp_path / "hub").glob("tabom_backend.json"))
    exported = load_model(str(tmp_path / "hub"))
    with torch.no_grad():
        torch.testing.assert_close(exported(ids, mask), dlm(ids, mask), rtol=0, atol=0)


def test_unmodified_export_reproduces_the_fixture_and_its_logits(loaded, tmp_path):
    for name in ("llada", "dream"):
        export_model(loaded[name], tmp_path / name)
        out = load_file(str(tmp_path / name / "model.safetensors"))
        ref = load_file(str(FIXTURES / name / "model.safetensors"))
        assert sorted(out) == sorted(ref) and all(torch.equal(out[k], ref[k]) for k in ref)
        again = load_model(str(tmp_path / name), dtype="float32")
        assert fixture_diff(again, FIXTURES / name, FOLDERS[name][1]) <= TOL


def test_a_failed_save_leaves_no_complete_looking_folder(loaded, tmp_path, monkeypatch):
    import tabom.models as models

    dlm = loaded["dream"]
    target = tmp_path / "model"

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(models, "save_native_files", crash)  # after the weights are written
    with pytest.raises(OSError, match="disk full"):
        save_model(dlm, target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    save_model(dlm, target)
    before = sorted(p.name for p in target.iterdir())
    monkeypatch.setattr(models, "save_native_files", crash)
    with pytest.raises(OSError):
        save_model(dlm, target)  # an existing complete folder stays as it was
    assert sorted(p.name for p in target.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_export_refuses_a_model_without_a_hub_layout():
    with pytest.raises(ValueError, match="no hub layout"):
        export_model(load_model("tiny-base"), "unused")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["llada-masked", "dream"])
def test_bf16_on_cuda_stays_close_to_the_real_code(name):
    dlm = load_model(str(FIXTURES / name), device="cuda")  # dtype auto: bf16 weights
    assert next(dlm.model.parameters()).dtype == torch.bfloat16
    saved = load_file(str(FIXTURES / name / "cases.safetensors"))
    ids, mask = saved["padded_batch.input_ids"].cuda(), saved["padded_batch.attention_mask"].cuda()
    ref = load_model(str(FIXTURES / name), dtype="fp32", device="cuda")
    with torch.no_grad():
        got, full = dlm(ids, mask).float(), ref(ids, mask)
    assert bool(torch.isfinite(got).all())
    real = mask.bool()
    torch.testing.assert_close(got[real], full[real], atol=0.1, rtol=0.1)


@pytest.mark.parametrize(
    ("hub_id", "name"),
    [("GSAI-ML/LLaDA-8B-Instruct", "llada-masked"), ("Dream-org/Dream-v0-Instruct-7B", "dream")],
)
def test_a_hub_id_loads_natively_from_the_local_cache(tmp_path, monkeypatch, hub_id, name):
    """``load_model(hub id)`` as a user calls it, served offline from a hub-cache snapshot."""
    import huggingface_hub.constants as hub_constants

    repo = tmp_path / ("models--" + hub_id.replace("/", "--"))
    rev = "0" * 40
    shutil.copytree(FIXTURES / name, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    import transformers.utils.hub as transformers_hub

    if hasattr(transformers_hub, "TRANSFORMERS_CACHE"):  # transformers 4.x's own copy
        monkeypatch.setattr(transformers_hub, "TRANSFORMERS_CACHE", str(tmp_path))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    dlm = load_model(hub_id, dtype="float32")
    assert dlm.spec.name == FOLDERS[name][0]
    assert Path(dlm.extra["hub_dir"]) == repo / "snapshots" / rev
    assert fixture_diff(dlm, FIXTURES / name, FOLDERS[name][1]) <= TOL
    with pytest.raises(FileNotFoundError, match="cannot be fetched"):
        load_model("no-such-org/no-such-model", backend=FOLDERS[name][0])
