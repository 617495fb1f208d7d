import pytest

from sae_lens_jumprelu.cli import parse_args
from sae_lens_jumprelu.sites import Site
from sae_lens_jumprelu.train import TrainJob

SITES = [Site("blocks.1.hook_resid_post", 64, 1), Site("blocks.1.attn.hook_z", 64, 1)]


def test_one_setting_names_saes_by_hook_and_the_default_is_target_32():
    names = TrainJob().sae_names(SITES)
    assert names == {
        "blocks.1.hook_resid_post": (SITES[0], {"target_l0": 32.0}),
        "blocks.1.attn.hook_z": (SITES[1], {"target_l0": 32.0}),
    }


def test_a_sweep_gives_one_sae_per_site_and_setting():
    names = TrainJob(l0_coefficient=[1e-3, 0.1]).sae_names(SITES[:1])
    assert names == {
        "blocks.1.hook_resid_post@l0_coefficient=0.001": (SITES[0], {"l0_coefficient": 1e-3}),
        "blocks.1.hook_resid_post@l0_coefficient=0.1": (SITES[0], {"l0_coefficient": 0.1}),
    }


def test_target_and_coefficient_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        TrainJob(target_l0=[8], l0_coefficient=[1e-3]).sparsity_settings()
    with pytest.raises(SystemExit):
        parse_args(["train", "--target-l0", "8", "--l0-coefficient", "1e-3"])


def test_cli_flags_reach_the_job():
    from sae_lens_jumprelu.cli import _job

    args = parse_args(
        [
            "train",
            "--site",
            "resid:3",
            "--site",
            "attn:3",
            "--tokens",
            "1000",
            "--d-sae",
            "64",
            "--target-l0",
            "8",
            "--target-l0",
            "16",
            "--recipe",
            "paper",
            "--seed",
            "3",
            "--dtype",
            "bfloat16",
            "--keep-special-tokens",
        ]
    )
    job = _job(args)
    assert (job.sites, job.tokens, job.d_sae, job.target_l0) == (
        ["resid:3", "attn:3"],
        1000,
        64,
        [8, 16],
    )
    assert (job.recipe, job.seed, job.dtype, job.exclude_special_tokens) == (
        "paper",
        3,
        "bfloat16",
        False,
    )
    assert _job(parse_args(["train"])) == TrainJob()  # the CLI's defaults are the job's
    with pytest.raises(SystemExit):
        parse_args(["train", "--tokens", "0"])


def test_distributed_flags_reach_the_job_and_bad_ones_are_refused(tmp_path):
    from sae_lens_jumprelu.cli import _job

    argv = "train --distributed sae --dist-timeout 60 --checkpoint-every 50".split()
    job = _job(parse_args([*argv, "--resume", str(tmp_path)]))
    assert (job.distributed, job.dist_timeout, job.checkpoint_every) == ("sae", 60.0, 50)
    assert job.resume == tmp_path
    with pytest.raises(SystemExit):
        parse_args(["train", "--distributed", "model"])
    with pytest.raises(ValueError, match="dist_timeout must be positive"):
        TrainJob(distributed="data", dist_timeout=0)
    with pytest.raises(ValueError, match="add --distributed data"):
        TrainJob(checkpoint_every=10)
    with pytest.raises(ValueError, match="single-process for now"):
        TrainJob(distributed="data", activations=tmp_path)


def test_distributed_training_outside_torchrun_says_how_to_launch(monkeypatch):
    from sae_lens_jumprelu.distributed import init_from_env

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc-per-node N -m sae_lens_jumprelu"):
        init_from_env(60.0)
