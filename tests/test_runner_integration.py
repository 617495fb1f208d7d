"""The user story of the README: SAELens's own LanguageModelSAETrainingRunner trains ours."""

import json
from pathlib import Path

import torch
from datasets import Dataset
from sae_lens import (
    SAE,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
)
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_lens_jumprelu import JumpReLUSTETrainingSAE, JumpReLUSTETrainingSAEConfig


def test_runner_trains_and_saves_plain_jumprelu(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = HookedTransformer(
        HookedTransformerConfig(
            n_layers=1, d_model=16, n_ctx=32, d_head=8, n_heads=2, d_vocab=64, act_fn="gelu"
        )
    )
    dataset = Dataset.from_dict({"tokens": torch.randint(1, 64, (200, 32)).tolist()})
    cfg = LanguageModelSAERunnerConfig(
        sae=JumpReLUSTETrainingSAEConfig(d_in=16, d_sae=32, target_l0=4),
        model_name="tiny",
        hook_name="blocks.0.hook_resid_post",
        dataset_path="unused",
        is_dataset_tokenized=True,
        context_size=32,
        prepend_bos=False,
        training_tokens=64 * 60,
        train_batch_size_tokens=64,
        store_batch_size_prompts=4,
        n_batches_in_buffer=4,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=str(tmp_path),
        checkpoint_path=None,
    )
    sae = LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run()

    assert isinstance(sae, JumpReLUSTETrainingSAE)
    saved = json.loads((tmp_path / "cfg.json").read_text())
    assert saved["architecture"] == "jumprelu"
    assert saved["metadata"]["training_architecture"] == "jumprelu_ste"
    assert saved["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    assert sae.input_scale.item() != 1.0  # the paper's normalisation was estimated and folded
    loaded = SAE.load_from_disk(tmp_path)
    x = torch.randn(7, 16) * 3
    torch.testing.assert_close(loaded(x), sae(x), rtol=1e-5, atol=1e-5)
