"""Gemma Scope files against SAELens's own Gemma Scope loaders and the tutorial's forward."""

import zipfile
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from convert_factories import inputs, make_jumprelu
from sae_lens.loading.pretrained_sae_loaders import (
    gemma_2_sae_huggingface_loader,
    handle_config_defaulting,
    load_safetensors_weights,
)
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from safetensors.numpy import save_file

from sae_lens_jumprelu.convert import ConversionError
from sae_lens_jumprelu.convert.gemma_scope import infer_site, read_gemma_scope, write_gemma_scope
from sae_lens_jumprelu.convert.sae_lens_format import to_sae_lens_sae

REPO = "google/gemma-scope-2b-pt-res"
FOLDER = "layer_3/average_l0_5"  # no width_*: SAELens takes d_sae from cfg_overrides


def _released_arrays(d_in: int = 8, d_sae: int = 16) -> dict[str, np.ndarray]:
    w = make_jumprelu(d_in, d_sae)
    return {k: v.numpy() for k, v in w.state_dict().items()}


def _hub_cache_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arrays: dict) -> Path:
    """A local Hugging Face cache holding REPO/FOLDER/params.npz; the hub is set offline."""
    cache, commit = tmp_path / "hub", "0" * 40
    repo_dir = cache / f"models--{REPO.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    file = repo_dir / "snapshots" / commit / FOLDER / "params.npz"
    file.parent.mkdir(parents=True)
    np.savez(file, **arrays)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return file


def test_npz_import_equals_sae_lens_gemma_2_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SAELens's own loader (hf_hub_download on an offline local cache) vs our importer."""
    file = _hub_cache_with(tmp_path, monkeypatch, _released_arrays())
    cfg, state_dict, _ = gemma_2_sae_huggingface_loader(
        REPO, FOLDER, cfg_overrides={"d_in": 8, "d_sae": 16}
    )
    theirs = JumpReLUSAE(JumpReLUSAEConfig.from_dict(handle_config_defaulting(cfg)))
    theirs.load_state_dict(state_dict)
    # d_in given, as SAELens's cfg_overrides: the tiny file is not 2304 wide like Gemma 2 2B
    ours_w = read_gemma_scope(file, release_path=f"{REPO}/{FOLDER}", d_in=8)
    assert ours_w.metadata["hook_name"] == cfg["hook_name"] == "blocks.3.hook_resid_post"
    assert ours_w.metadata["model_name"] == cfg["model_name"] == "gemma-2-2b"
    assert ours_w.apply_b_dec_to_input is cfg["apply_b_dec_to_input"] is False
    ours = to_sae_lens_sae(ours_w)
    for name, tensor in state_dict.items():
        assert torch.equal(getattr(ours, name), tensor), name
    with torch.no_grad():
        for x in inputs(8).values():
            assert torch.equal(ours.encode(x), theirs.encode(x))
            assert torch.equal(ours(x), theirs(x))


def test_gemma_scope_2_safetensors_import(tmp_path: Path) -> None:
    """Gemma Scope 2 keys (w_enc, w_dec) read as SAELens's gemma_3 loader maps them.

    That loader asks the hub for the file's tensor shapes over HTTP, which cannot run offline,
    so the comparison uses its weight reader ``load_safetensors_weights`` and its key map.
    """
    arrays = _released_arrays()
    arrays["w_enc"], arrays["w_dec"] = arrays.pop("W_enc"), arrays.pop("W_dec")
    file = tmp_path / "params.safetensors"
    save_file(arrays, file)
    raw = load_safetensors_weights(file, dtype="float32")
    ref = {"W_enc": raw["w_enc"], "W_dec": raw["w_dec"], "b_enc": raw["b_enc"],
           "b_dec": raw["b_dec"], "threshold": raw["threshold"]}  # fmt: skip
    ours = read_gemma_scope(file, release_path="gemma-scope-2-270m-pt/resid_post/layer_6")
    assert ours.metadata["hook_name"] == "blocks.6.hook_resid_post"
    for name, tensor in ref.items():
        assert torch.equal(getattr(ours, name), tensor), name


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_export_reproduces_tutorial_forward(tmp_path: Path, suffix: str) -> None:
    """A JumpReLU SAE subtracting b_dec -> params file -> the tutorial's numpy forward."""
    w = make_jumprelu(8, 16, apply=True)
    file = tmp_path / f"params{suffix}"
    write_gemma_scope(w, file)
    if suffix == ".npz":
        with np.load(file) as data:
            p = {k: data[k] for k in data.files}
    else:
        p = {k.replace("w_", "W_"): v.numpy() for k, v in load_safetensors_weights(file).items()}
    assert all(v.dtype == np.float32 for v in p.values())
    assert p["W_enc"].shape == (8, 16) and p["W_dec"].shape == (16, 8)
    sae = to_sae_lens_sae(w)
    for x in inputs(8).values():
        pre = x.numpy() @ p["W_enc"] + p["b_enc"]
        acts = (pre > p["threshold"]) * np.maximum(pre, 0)  # Gemma Scope tutorial
        recon = acts @ p["W_dec"] + p["b_dec"]
        with torch.no_grad():
            np.testing.assert_allclose(acts, sae.encode(x).numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(recon, sae(x).numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("path", "facts"),
    [
        ("gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71",
         {"hook_name": "blocks.20.hook_resid_post", "d_sae": 16384, "d_in": 2304,
          "model_name": "gemma-2-2b"}),
        ("gemma-scope-9b-it-mlp/layer_5/width_131k/average_l0_10",
         {"hook_name": "blocks.5.hook_mlp_out", "d_sae": 131072, "d_in": 3584,
          "model_name": "gemma-2-9b-it"}),
        ("gemma-scope-2b-pt-att/layer_0/width_1m/average_l0_9",
         {"hook_name": "blocks.0.attn.hook_z", "d_sae": 1048576, "d_in": 2048,
          "model_name": "gemma-2-2b"}),
        ("gemma-scope-2-1b-pt/mlp_out/layer_7_width_262k_l0_big",
         {"hook_name": "blocks.7.hook_mlp_out", "d_sae": 262144}),
        ("somewhere/params.npz", {}),
    ],
)  # fmt: skip
def test_infer_site(path: str, facts: dict) -> None:
    assert infer_site(path) == facts


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    good = _released_arrays()
    np.savez(tmp_path / "params.npz", **good)
    with pytest.raises(ConversionError, match="release path says width 16384"):
        read_gemma_scope(tmp_path / "params.npz", release_path="x-res/layer_1/width_16k/l0_5")
    with pytest.raises(ConversionError, match="W_enc has d_in 8, but 2304 was given or implied"):
        read_gemma_scope(tmp_path / "params.npz", release_path="gemma-scope-2b-pt-res/layer_1")
    data = (tmp_path / "params.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated"):
        read_gemma_scope(tmp_path / "trunc.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ConversionError, match="not a readable .npz archive"):
        read_gemma_scope(tmp_path / "text.npz")
    np.savez(tmp_path / "extra.npz", **good, scaling_factor=np.ones(16, np.float32))
    with pytest.raises(ConversionError, match=r"unexpected \['scaling_factor'\]"):
        read_gemma_scope(tmp_path / "extra.npz")
    np.savez(tmp_path / "f64.npz", **{**good, "b_dec": good["b_dec"].astype(np.float64)})
    with pytest.raises(ConversionError, match="Gemma Scope files are float32"):
        read_gemma_scope(tmp_path / "f64.npz")
    np.savez(tmp_path / "neg.npz", **{**good, "threshold": -np.ones(16, np.float32)})
    with pytest.raises(ConversionError, match="negative thresholds"):
        read_gemma_scope(tmp_path / "neg.npz")
    assert zipfile.is_zipfile(tmp_path / "params.npz")


def test_a_npy_renamed_npz_is_named_as_such(tmp_path):
    import numpy as np

    from sae_lens_jumprelu.convert import ConversionError
    from sae_lens_jumprelu.convert.gemma_scope import read_gemma_scope

    np.save(tmp_path / "params.npy", np.zeros(3, dtype=np.float32))
    (tmp_path / "params.npy").rename(tmp_path / "params.npz")
    with pytest.raises(ConversionError, match="is a single .npy array, not a Gemma Scope .npz"):
        read_gemma_scope(tmp_path / "params.npz", hook_name="blocks.0.hook_resid_post", d_in=3)
