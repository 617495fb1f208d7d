"""Any SAE spec -> a SAELens SAE: SAELens directories of any architecture, converter formats, and
pretrained releases (no hub here: the offline error)."""

from pathlib import Path

import huggingface_hub
import pytest
import torch
from convert_factories import inputs, make_jumprelu
from sae_lens import TopKSAE, TopKSAEConfig

from sae_lens_jumprelu.convert.dictionary_learning import write_dictionary_learning
from sae_lens_jumprelu.convert.gemma_scope import write_gemma_scope
from sae_lens_jumprelu.convert.sae_lens_format import to_sae_lens_sae
from sae_lens_jumprelu.sae_source import SAESourceError, load_sae

RELEASE = "gemma-scope-2b-pt-res-canonical"


def test_sae_lens_directory_of_any_architecture_loads_with_its_metadata(tmp_path: Path) -> None:
    cfg = TopKSAEConfig(d_in=8, d_sae=16, k=3)
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    cfg.metadata.context_size = 32
    saved = TopKSAE(cfg)
    saved.save_model(tmp_path / "topk")
    loaded = load_sae(tmp_path / "topk")
    assert (loaded.source_format, loaded.name) == ("sae-lens", "topk")
    assert isinstance(loaded.sae, TopKSAE)
    assert loaded.sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert loaded.sae.cfg.metadata.context_size == 32
    x = inputs(8)["gaussian"]
    with torch.no_grad():
        assert torch.equal(loaded.sae(x), saved(x))


@pytest.mark.parametrize("kind", ["gemma-scope", "dictionary-learning"])
def test_converter_formats_become_the_same_sae_lens_sae(tmp_path: Path, kind: str) -> None:
    weights = make_jumprelu(d_in=8, d_sae=16)
    if kind == "gemma-scope":
        path = tmp_path / "params.npz"
        write_gemma_scope(weights, path)
    else:
        path = tmp_path / "dl"
        path.mkdir()
        write_dictionary_learning(weights, path)
    loaded = load_sae(str(path))
    assert loaded.source_format == kind
    reference = to_sae_lens_sae(weights)
    with torch.no_grad():
        for x in inputs(8).values():
            assert torch.equal(loaded.sae.encode(x), reference.encode(x))
            assert torch.equal(loaded.sae(x), reference(x))
    if kind == "gemma-scope":  # a bare params file outside a release path names no hook
        assert not loaded.sae.cfg.metadata.hook_name


def test_a_name_that_is_neither_path_nor_release_lists_what_is_accepted() -> None:
    unknown = "does not exist as a file or directory and is not a known SAELens release"
    with pytest.raises(SAESourceError, match=unknown) as info:
        load_sae("no-such-sae/layer_3")
    for accepted in ("cfg.json + sae_weights.safetensors", "params.npz", "ae.pt", "RELEASE/SAE_ID"):
        assert accepted in str(info.value)


def test_a_file_of_another_kind_is_refused_with_the_accepted_formats(tmp_path: Path) -> None:
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(SAESourceError, match="not a Gemma Scope params.npz.*Accepted: a SAELens"):
        load_sae(tmp_path / "weights.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAESourceError, match="cannot tell the format"):
        load_sae(tmp_path / "empty")


def test_release_ids_are_checked_before_any_download() -> None:
    with pytest.raises(SAESourceError, match=f"'{RELEASE}' is a release, not one SAE.*layer_0"):
        load_sae(RELEASE)
    missing = r"has no SAE 'layer_99/x'; it has \d+, e\.g\. \['layer_0/width_16k/canonical'"
    with pytest.raises(SAESourceError, match=missing):
        load_sae(f"{RELEASE}/layer_99/x")


def test_a_release_without_network_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = f"{RELEASE}/layer_20/width_16k/canonical"
    with pytest.raises(SAESourceError, match=f"cannot fetch {spec} from the Hugging Face hub"):
        load_sae(spec)
    with pytest.raises(SAESourceError, match="Without network access, download it"):
        load_sae(spec)


def test_a_damaged_sae_lens_directory_names_the_problem(tmp_path: Path) -> None:
    sae = to_sae_lens_sae(make_jumprelu())
    sae.save_model(tmp_path / "sae")
    (tmp_path / "sae" / "sae_weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SAESourceError, match="SAELens cannot load this directory.*damaged"):
        load_sae(tmp_path / "sae")
    sae.save_model(tmp_path / "sae2")
    (tmp_path / "sae2" / "cfg.json").write_text('{"architecture": "jumprelu", "d_in": ')
    with pytest.raises(SAESourceError, match="sae2: SAELens cannot load this directory"):
        load_sae(tmp_path / "sae2")


def test_an_unfolded_input_scaling_is_flagged(tmp_path: Path) -> None:
    cfg = TopKSAEConfig(d_in=8, d_sae=16, k=3, normalize_activations="expected_average_only_in")
    TopKSAE(cfg).save_model(tmp_path / "scaled")
    with pytest.warns(UserWarning, match="'expected_average_only_in'.*the metrics are wrong"):
        load_sae(tmp_path / "scaled")
