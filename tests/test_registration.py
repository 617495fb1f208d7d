"""Registration of "jumprelu_ste" with SAELens: idempotent, reload-safe, refuses a foreign owner."""

import importlib
from collections.abc import Iterator

import pytest
from sae_lens import JumpReLUTrainingSAEConfig
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUTrainingSAE
from sae_lens.saes.sae import TrainingSAE

import sae_lens_jumprelu
from sae_lens_jumprelu import (
    JumpReLUSTETrainingSAE,
    JumpReLUSTETrainingSAEConfig,
    register,
)


@pytest.fixture
def restore_registry() -> Iterator[None]:
    saved = dict(SAE_TRAINING_CLASS_REGISTRY)
    yield
    SAE_TRAINING_CLASS_REGISTRY.clear()
    SAE_TRAINING_CLASS_REGISTRY.update(saved)


def current_entry() -> tuple[type, type]:
    return SAE_TRAINING_CLASS_REGISTRY["jumprelu_ste"]


def test_import_registers_current_classes() -> None:
    assert current_entry() == (JumpReLUSTETrainingSAE, JumpReLUSTETrainingSAEConfig)


def test_sae_lens_builds_our_sae_from_a_dict() -> None:
    sae = TrainingSAE.from_dict({"architecture": "jumprelu_ste", "d_in": 2, "d_sae": 3})
    assert type(sae) is JumpReLUSTETrainingSAE


def test_sae_lens_jumprelu_entries_untouched() -> None:
    assert SAE_TRAINING_CLASS_REGISTRY["jumprelu"] == (
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
    )
    assert SAE_CLASS_REGISTRY["jumprelu"][0] is JumpReLUSAE


def test_import_twice_and_reload(restore_registry: None) -> None:
    again = importlib.import_module("sae_lens_jumprelu")
    assert again is sae_lens_jumprelu
    register()
    register()
    reloaded = importlib.reload(sae_lens_jumprelu)
    assert current_entry() == (
        reloaded.JumpReLUSTETrainingSAE,
        reloaded.JumpReLUSTETrainingSAEConfig,
    )


def test_register_replaces_a_stale_entry_from_this_package(restore_registry: None) -> None:
    # What reloading the submodules leaves behind: a class of the same name and module that is
    # no longer the current one.
    stale = type(
        "JumpReLUSTETrainingSAE",
        (JumpReLUSTETrainingSAE,),
        {"__module__": "sae_lens_jumprelu.training_sae"},
    )
    SAE_TRAINING_CLASS_REGISTRY["jumprelu_ste"] = (stale, JumpReLUSTETrainingSAEConfig)
    register()
    assert current_entry() == (JumpReLUSTETrainingSAE, JumpReLUSTETrainingSAEConfig)


class ForeignSAE(JumpReLUTrainingSAE):
    """Another plugin's class under the same architecture name."""


def test_foreign_owner_makes_register_raise(restore_registry: None) -> None:
    SAE_TRAINING_CLASS_REGISTRY["jumprelu_ste"] = (ForeignSAE, JumpReLUTrainingSAEConfig)
    with pytest.raises(RuntimeError, match=r"jumprelu_ste.*ForeignSAE"):
        register()
    assert current_entry() == (ForeignSAE, JumpReLUTrainingSAEConfig)  # left as it was
