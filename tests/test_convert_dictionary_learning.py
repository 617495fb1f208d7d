"""dictionary_learning JumpReluAutoEncoder files against its forward (as stated in the module)."""

import json
from pathlib import Path

import pytest
import torch
from convert_factories import inputs, make_jumprelu

from sae_lens_jumprelu.convert import ConversionError
from sae_lens_jumprelu.convert.dictionary_learning import (
    read_dictionary_learning,
    write_dictionary_learning,
)
from sae_lens_jumprelu.convert.sae_lens_format import to_sae_lens_sae


def _dl_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, apply_b_dec: bool) -> tuple:
    """JumpReluAutoEncoder.encode / decode: relu(pre * (pre > threshold)), f @ W_dec + b_dec."""
    x_in = x - sd["b_dec"] if apply_b_dec else x
    pre = x_in @ sd["W_enc"] + sd["b_enc"]
    f = torch.relu(pre * (pre > sd["threshold"]))
    return f, f @ sd["W_dec"] + sd["b_dec"]


@pytest.mark.parametrize("apply", [True, False])
def test_export_matches_dictionary_learning_forward(tmp_path: Path, apply: bool) -> None:
    w = make_jumprelu(8, 16, apply=apply)
    write_dictionary_learning(w, tmp_path)
    sd = torch.load(tmp_path / "ae.pt", weights_only=True)
    trainer = json.loads((tmp_path / "config.json").read_text())["trainer"]
    assert trainer["dict_class"] == "JumpReluAutoEncoder"
    assert (trainer["activation_dim"], trainer["dict_size"]) == (8, 16)
    assert sd["W_enc"].shape == (8, 16) and sd["W_dec"].shape == (16, 8)
    sae = to_sae_lens_sae(w)
    for x in inputs(8).values():
        f, recon = _dl_forward(sd, x, trainer["apply_b_dec_to_input"])
        with torch.no_grad():
            assert torch.equal(f, sae.encode(x))
            torch.testing.assert_close(recon, sae(x))
    back = read_dictionary_learning(tmp_path)
    for name, tensor in w.state_dict().items():
        assert torch.equal(getattr(back, name), tensor)
    assert back.apply_b_dec_to_input == apply


def test_bad_dictionary_learning_dirs(tmp_path: Path) -> None:
    write_dictionary_learning(make_jumprelu(8, 16), tmp_path)
    config = tmp_path / "config.json"
    cfg = json.loads(config.read_text())
    config.write_text(json.dumps({"trainer": {**cfg["trainer"], "dict_size": 32}}))
    with pytest.raises(ConversionError, match="trainer.dict_size is 32 but ae.pt has 16"):
        read_dictionary_learning(tmp_path)
    config.write_text(json.dumps({"trainer": {**cfg["trainer"], "dict_class": "AutoEncoder"}}))
    with pytest.raises(ConversionError, match="expected 'JumpReluAutoEncoder'"):
        read_dictionary_learning(tmp_path)
    config.write_text(json.dumps(cfg))
    data = (tmp_path / "ae.pt").read_bytes()
    (tmp_path / "ae.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        read_dictionary_learning(tmp_path)
    sd = make_jumprelu(8, 16).state_dict()
    del sd["threshold"]
    torch.save(sd, tmp_path / "ae.pt")
    with pytest.raises(ConversionError, match=r"missing \['threshold'\]"):
        read_dictionary_learning(tmp_path)
