"""``sae-jumprelu sweep`` on the tiny Gemma 2: every architecture trains on the same stream."""

import csv

import pytest
import torch
from gemma_fixtures import BOS, tiny_model
from sae_lens import SAE, TopKTrainingSAE, TopKTrainingSAEConfig

from sae_lens_jumprelu.architectures import ARCHITECTURES
from sae_lens_jumprelu.commands.cli import main, parse_args
from sae_lens_jumprelu.commands.sweep import SweepJob, run_sweep
from sae_lens_jumprelu.data.corpus import TokenCorpus
from sae_lens_jumprelu.training.lockstep import train_in_lockstep
from sae_lens_jumprelu.training.settings import TrainerSettings

TWO_EACH = {name: arch.grid[:2] for name, arch in ARCHITECTURES.items()}
# What each architecture's saved SAE is in SAELens (BatchTopK saves as JumpReLU).
SAVED_AS = {
    "jumprelu_ste_target": "jumprelu",
    "jumprelu_ste_lambda": "jumprelu",
    "jumprelu": "jumprelu",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "gated": "gated",
}


def _corpus(n_train: int, n_held_out: int = 8, context: int = 32) -> TokenCorpus:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, 1000, (n_train + n_held_out, context), generator=generator)
    tokens[:, 0] = BOS
    return TokenCorpus(tokens[:n_train], tokens[n_train:], "random tokens")


def test_every_architecture_trains_on_one_stream_and_is_reported(tmp_path):
    model, corpus = tiny_model(), _corpus(n_train=32)
    forwarded: list[torch.Tensor] = []
    model.embed.register_forward_pre_hook(lambda _m, args: forwarded.append(args[0].cpu()))
    job = SweepJob(
        site="resid:1",
        tokens=1024,
        d_sae=32,
        batch_size=128,
        grids=TWO_EACH,
        out=tmp_path / "sweep",
        eval_tokens=256,
    )
    result = run_sweep(job, model=model, corpus=corpus)

    # The LM ran once per batch of contexts for all 12 SAEs: every training context was
    # forwarded exactly once (the other passes are the held-out evaluation's).
    train_passes = [t for t in forwarded if t.shape[0] == 16]
    assert len(train_passes) == 2 and torch.equal(torch.cat(train_passes), corpus.train)

    with open(result.files["csv"]) as f:
        rows = list(csv.DictReader(f))
    required = {"architecture", "setting", "l0", "fvu", "delta_lm_loss", "frac_dead"}
    assert required <= set(rows[0])
    expected = [(a, ARCHITECTURES[a].setting(v)) for a, grid in TWO_EACH.items() for v in grid]
    assert [(r["architecture"], r["setting"]) for r in rows] == expected
    # 32 contexts of 32 tokens (the tokenizer-less model has no special tokens to drop):
    # 8 batches of 128 for every SAE
    assert {int(r["train_tokens"]) for r in rows} == {8 * 128}
    for r in rows:
        assert 0 <= float(r["l0"]) <= 32 and float(r["fvu"]) > 0 and int(r["eval_tokens"]) == 256
    topk = {r["setting"]: float(r["l0"]) for r in rows if r["architecture"] == "topk"}
    assert topk["k=8"] <= 8 and topk["k=16"] <= 16  # TopK's L0 is at most k (ReLU after top-k)

    for key in ("delta_lm_loss", "fvu", "frequency"):
        png = result.files[key].read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "| topk | k=8 |" in result.files["md"].read_text()

    for name, path in result.sae_dirs.items():
        sae = SAE.load_from_disk(path)
        assert sae.cfg.architecture() == SAVED_AS[name.split("/")[0]], name
        assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
        if SAVED_AS[name.split("/")[0]] != "topk":  # TopK's fold is not exact: left as trained
            torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32))


def test_sae_lens_scaling_is_folded_into_the_trained_weights():
    """A built-in trained on raw x with scaling s equals the same SAE trained on s*x, read
    back in raw units: the fold is SAETrainer.fit's."""
    generator = torch.Generator().manual_seed(1)
    xs = [torch.randn(64, 8, generator=generator) * 30 + 5 for _ in range(6)]
    s = 0.05

    def make(normalize: str) -> TopKTrainingSAE:
        torch.manual_seed(0)
        cfg = TopKTrainingSAEConfig(d_in=8, d_sae=16, k=3, normalize_activations=normalize)
        return TopKTrainingSAE(cfg)

    settings = TrainerSettings(total_samples=6 * 64, batch_size=64, lr=1e-2)
    scaled, folded = make("none"), make("expected_average_only_in")
    train_in_lockstep({"a": scaled}, {"a": "x"}, iter([{"x": x * s} for x in xs]), settings)
    train_in_lockstep(
        {"b": folded}, {"b": "x"}, iter([{"x": x} for x in xs]), settings, None, None, {"b": s}
    )
    x = xs[0]
    assert folded.cfg.normalize_activations == "none"
    torch.testing.assert_close(folded(x), scaled(x * s) / s, rtol=1e-4, atol=1e-4)
    # the same latents fire (their values differ: TopK scales them by the decoder-row norms,
    # which the fold divides by s)
    assert torch.equal(folded.encode(x) != 0, scaled.encode(x * s) != 0)


def test_normalisation_without_its_factor_is_refused():
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=4, d_sae=8, k=2, normalize_activations="expected_average_only_in"
        )
    )
    with pytest.raises(ValueError, match="give its scaling factor in activation_scaling"):
        train_in_lockstep({"a": sae}, {"a": "x"}, iter([]), TrainerSettings())


def test_unknown_architecture_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        parse_args(["sweep", "--architectures", "topk,relu"])
    err = capsys.readouterr().err
    assert "unknown architecture(s) ['relu']" in err
    assert ", ".join(ARCHITECTURES) in err
    with pytest.raises(ValueError, match="unknown architecture 'relu'; choose from jumprelu_ste"):
        SweepJob(architectures=("relu",))
    with pytest.raises(SystemExit):
        parse_args(["sweep", "--grid", "topk:8"])
    assert "write ARCH=V1,V2" in capsys.readouterr().err


def test_bad_sweeps_fail_before_training(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"grids given for \['gated'\], which are not in"):
        SweepJob(architectures=("topk",), grids={"gated": (1.0,)})
    with pytest.raises(ValueError, match="must be positive values"):
        SweepJob(grids={"topk": (8.0, 0.0)})
    with pytest.raises(ValueError, match="names 4 .* give one, e.g. resid:6"):
        run_sweep(SweepJob(site="resid:*", out=tmp_path / "x"), tiny_model(), _corpus(4))
    assert not (tmp_path / "x").exists()
    assert main(["sweep", "--tokens", "100", "--out", str(tmp_path / "y")]) == 2
    assert "less than one batch of 256" in capsys.readouterr().err


def test_cli_flags_reach_the_job():
    from sae_lens_jumprelu.commands.flags import job_from

    args = parse_args(
        "sweep --site mlp:3 --tokens 5000 --d-sae 64 --architectures topk,gated "
        "--grid topk=4,8 --grid gated=0.5 --seed 2 --dtype bfloat16".split()
    )
    job = job_from(SweepJob, args)
    assert (job.site, job.tokens, job.d_sae, job.seed, job.dtype) == (
        "mlp:3",
        5000,
        64,
        2,
        "bfloat16",
    )
    assert job.architectures == ("topk", "gated")
    assert job.grids == {"topk": (4.0, 8.0), "gated": (0.5,)}
    assert [(a.name, v) for a, v in job.settings()] == [
        ("topk", 4.0),
        ("topk", 8.0),
        ("gated", 0.5),
    ]
    assert (
        job_from(SweepJob, parse_args(["sweep"])) == SweepJob()
    )  # the CLI's defaults are the job's


def test_the_learning_rate_is_the_recipes_unless_given():
    from sae_lens_jumprelu.recipes import PAPER, SHORT_BUDGET

    assert SweepJob().recipe_settings().lr == SHORT_BUDGET.lr
    assert SweepJob(recipe="paper").recipe_settings().lr == PAPER.lr
    assert SweepJob(recipe="paper", lr=5e-3).recipe_settings().lr == 5e-3
    assert SweepJob(recipe="paper").recipe_settings().batch_size == SweepJob().batch_size


def test_batches_and_each_sae_do_not_depend_on_the_other_architectures(tmp_path, monkeypatch):
    # Each SAE is built from its own seed without touching the global RNG the shuffle buffer
    # draws from: the batches are those of the stream alone, whichever architectures are
    # swept, and adding architectures does not change the TopK SAE.
    import sae_lens_jumprelu.commands.sweep as sweep_module
    from sae_lens_jumprelu.commands import pipeline
    from sae_lens_jumprelu.data.activations import iter_site_activations
    from sae_lens_jumprelu.data.sites import resolve_sites

    # a buffer of two batches: the shuffle keeps drawing after the SAEs are built
    monkeypatch.setattr(pipeline, "BUFFER_TOKENS", 128)
    hook = "blocks.1.hook_resid_post"
    seen: dict[str, list[torch.Tensor]] = {}

    def recording(run: str):
        def train(saes, hooks, batches, *args, **kwargs):
            kept = seen.setdefault(run, [])

            def tee():
                for batch in batches:
                    kept.append(batch[hook].clone())
                    yield batch

            return train_in_lockstep(saes, hooks, tee(), *args, **kwargs)

        return train

    saved = {}
    for run, architectures in (
        ("alone", ("topk",)),
        ("with_others", ("gated", "topk", "jumprelu")),
    ):
        monkeypatch.setattr(sweep_module, "train_in_lockstep", recording(run))
        job = SweepJob(
            site="resid:1",
            tokens=2048,
            d_sae=32,
            batch_size=64,
            architectures=architectures,
            grids={name: ARCHITECTURES[name].grid[:1] for name in architectures},
            out=tmp_path / run,
            eval_tokens=64,
        )
        result = run_sweep(job, model=tiny_model(), corpus=_corpus(n_train=64))
        (topk_dir,) = [path for name, path in result.sae_dirs.items() if name.startswith("topk/")]
        saved[run] = SAE.load_from_disk(topk_dir)

    model = tiny_model()
    sites = resolve_sites(model, ["resid:1"])
    torch.manual_seed(0)  # the job's seed
    passes = iter_site_activations(model, sites, _corpus(n_train=64).train)
    head, stream = pipeline.stream(passes, [hook], 64)
    expected = [batch[hook] for batch in stream]
    assert len(expected) == 32
    for run in ("alone", "with_others"):
        assert len(seen[run]) == 32
        assert all(torch.equal(a, b) for a, b in zip(seen[run], expected, strict=True)), run
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(saved["alone"], name), getattr(saved["with_others"], name))
