import re

import pytest

from sae_lens_jumprelu.commands.cli import parse_args
from sae_lens_jumprelu.commands.train_job import TrainJob
from sae_lens_jumprelu.data.sites import Site

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
    from sae_lens_jumprelu.commands.flags import job_from

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
    job = job_from(TrainJob, args)
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
    assert (
        job_from(TrainJob, parse_args(["train"])) == TrainJob()
    )  # the CLI's defaults are the job's
    with pytest.raises(SystemExit):
        parse_args(["train", "--tokens", "0"])


def test_distributed_flags_reach_the_job_and_bad_ones_are_refused(tmp_path):
    from sae_lens_jumprelu.commands.flags import job_from

    argv = "train --distributed sae --dist-timeout 60 --checkpoint-every 50".split()
    job = job_from(TrainJob, parse_args([*argv, "--resume", str(tmp_path)]))
    assert (job.distributed, job.dist_timeout, job.checkpoint_every) == ("sae", 60.0, 50)
    assert job.resume == tmp_path
    with pytest.raises(SystemExit):
        parse_args(["train", "--distributed", "model"])
    with pytest.raises(ValueError, match="dist_timeout must be positive"):
        TrainJob(distributed="data", dist_timeout=0)
    with pytest.raises(
        ValueError, match="launch with `torchrun --nproc-per-node 1 -m sae_lens_jumprelu"
    ):
        TrainJob(checkpoint_every=10)
    with pytest.raises(ValueError, match="single-process for now"):
        TrainJob(distributed="data", activations=tmp_path)


def test_distributed_training_outside_torchrun_says_how_to_launch(monkeypatch):
    from sae_lens_jumprelu.training.distributed import init_from_env

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc-per-node N -m sae_lens_jumprelu"):
        init_from_env(60.0)


def test_sae_config_reaches_our_saes_in_train_and_sweep():
    from sae_lens_jumprelu.commands.flags import job_from
    from sae_lens_jumprelu.commands.sweep import SweepJob
    from sae_lens_jumprelu.commands.train_job import new_sae

    argv = [
        "--sae-config",
        "normalized_mean_squared_norm=3.4",
        "--sae-config",
        "jumprelu_kernel=triangle",
        "--sae-config",
        "max_grad_norm=null",
    ]
    expected = {
        "normalized_mean_squared_norm": 3.4,
        "jumprelu_kernel": "triangle",
        "max_grad_norm": None,
    }
    job = job_from(TrainJob, parse_args(["train", *argv]))
    assert job.sae_config == expected
    assert job_from(SweepJob, parse_args(["sweep", *argv])).our_recipe().sae == {
        **job_from(SweepJob, parse_args(["sweep"])).our_recipe().sae,
        **expected,
    }
    sae = new_sae(job, SITES[0], {"target_l0": 8.0}, "text", 2.0, [])
    assert sae.cfg.normalized_mean_squared_norm == 3.4
    assert sae.cfg.jumprelu_kernel == "triangle" and sae.cfg.max_grad_norm is None
    assert sae.cfg.target_l0 == 8.0 and sae.cfg.d_sae == job.d_sae
    # Fields the recipe sets and sae_config leaves alone keep the recipe's values.
    assert sae.cfg.threshold_lr_scale == job.our_recipe().sae["threshold_lr_scale"]


def test_bad_sae_config_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="not a JumpReLUSTETrainingSAEConfig field"):
        TrainJob(sae_config={"bandwith": 0.1})
    with pytest.raises(ValueError, match="set by the job itself.*--d-sae"):
        TrainJob(sae_config={"d_sae": 64})
    with pytest.raises(ValueError, match="jumprelu_bandwidth must be > 0"):
        TrainJob(sae_config={"jumprelu_bandwidth": -1})
    with pytest.raises(ValueError, match="sae_config"):
        TrainJob(sae_config={"jumprelu_bandwidth": "wide"})
    with pytest.raises(SystemExit):
        parse_args(["train", "--sae-config", "jumprelu_bandwidth"])


def test_collect_flags_make_a_job_without_sae_options(tmp_path):
    from sae_lens_jumprelu.commands.flags import job_from

    job = job_from(
        TrainJob, parse_args(["collect", "--out", str(tmp_path), "--site", "mlp:2", "--seed", "4"])
    )
    assert (job.sites, job.seed, job.sae_config) == (["mlp:2"], 4, {})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"target_l0": [1025.0], "d_sae": 2048},
            r"--target-l0 1025 cannot be reached.*d_sae / 2 = 1024",
        ),
        ({"tokens": 100, "batch_size": 256}, r"--tokens 100 is less than one batch of 256"),
    ],
    ids=["target-above-half", "fewer-tokens-than-a-batch"],
)
def test_unreachable_requests_fail_before_the_model_loads(fields, message, tmp_path, capsys):
    from sae_lens_jumprelu.commands.cli import main

    with pytest.raises(ValueError, match=message):
        TrainJob(**fields).check_reachable()
    TrainJob(target_l0=[1024.0], d_sae=2048).check_reachable()  # half is still allowed
    argv = ["train", "--out", str(tmp_path / "run"), "--model", "no-such-model"]
    argv += ["--d-sae", str(fields.get("d_sae", 2048)), "--tokens", str(fields.get("tokens", 1000))]
    argv += [f"--target-l0={t:g}" for t in fields.get("target_l0", [])]
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()
