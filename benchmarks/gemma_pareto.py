"""Ours against SAELens's TopK, BatchTopK, JumpReLU and Gated SAEs on the embedded Gemma.

    python benchmarks/gemma_pareto.py            # ~50 min on the 2-core CPU

The protocol of issue 15: the embedded Gemma 3 270M, 250k training tokens of the embedded text
(contexts of 128, special tokens dropped) collected once into a ``collect`` cache, d_sae 4096,
one pass, every SAE trained by SAELens's ``SAETrainer`` on the same batches with the same
schedule (ours, ``short_budget``'s: batch 256, 5% warm-up, the last 20% decayed to zero). Every
baseline starts b_dec at the data mean and gets the best learning rate of ``--lr-grid``, chosen
on its middle setting by held-out FVU on the first site and reused on the others
(``--baseline-lr topk=3e-3`` reuses an earlier grid's choice instead); ours trains at its
recipe's learning rate, untuned. All are saved, reloaded by stock SAELens and evaluated with
``evals.evaluate_saes`` on held-out documents (L0, FVU, delta LM loss, dead latents).

Writes ``<out>/pareto.json``, ``<out>/pareto.md`` and, per site, PNGs of delta LM loss, FVU and
the dead fraction against L0.
"""

import argparse
import json
import math
import time
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from pathlib import Path
from typing import Any

import matplotlib
import torch
from sae_lens import SAE
from sae_lens.saes.sae import TrainingSAE

from sae_lens_jumprelu.architectures import ARCHITECTURES, Architecture, set_normalisation
from sae_lens_jumprelu.atomic import write_dir_atomic, write_text_atomic
from sae_lens_jumprelu.commands.collect import run_collect
from sae_lens_jumprelu.commands.train_job import TrainJob
from sae_lens_jumprelu.data.activation_cache import ActivationCache
from sae_lens_jumprelu.data.activations import (
    StreamStatistics,
    iter_site_activations,
    special_token_ids,
)
from sae_lens_jumprelu.data.models import load_model
from sae_lens_jumprelu.data.sites import Site, resolve_sites
from sae_lens_jumprelu.evals import SAEEvaluation, evaluate_saes
from sae_lens_jumprelu.recipes import SHORT_BUDGET, Recipe
from sae_lens_jumprelu.training.lockstep import train_in_lockstep

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OURS = "jumprelu_ste_target"
# Settings per contender; the middle one is where a baseline's learning rate is chosen. The
# JumpReLU and Gated coefficients span L0 ~10-60 at this budget (measured 2026-12-02).
SETTINGS: dict[str, tuple[float, ...]] = {
    OURS: (16.0, 32.0, 64.0),
    "topk": (16.0, 32.0, 64.0),
    "batchtopk": (16.0, 32.0, 64.0),
    "jumprelu": (0.1, 0.03, 0.01),
    "gated": (30.0, 10.0, 3.0),
}
# SAELens calls a latent dead after this many steps without firing, which switches on TopK's
# auxiliary loss; its default 1000 is longer than the whole run (976 steps).
DEAD_FEATURE_WINDOW = 100


@dataclass(frozen=True)
class Run:
    architecture: Architecture
    value: float
    lr: float

    @property
    def name(self) -> str:
        return f"{self.architecture.name}/{self.architecture.setting(self.value)}/lr={self.lr:g}"


def parse_args(
    doc: str = __doc__,
    out: str = "benchmarks/results/gemma_pareto",
    sites: tuple[str, ...] = ("resid:6", "mlp:6"),
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(out), help="JSON, tables, PNGs")
    parser.add_argument(
        "--work", type=Path, default=Path("gemma-pareto-work"), help="the cache and the SAEs"
    )
    parser.add_argument("--sites", nargs="+", default=list(sites))
    parser.add_argument("--tokens", type=int, default=250_000)
    parser.add_argument("--eval-tokens", type=int, default=13_000)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=TrainJob().batch_size)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--contenders", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--sae-config",
        type=json.loads,
        default={},
        help="JSON object of JumpReLUSTETrainingSAEConfig fields over ours' recipe",
    )
    parser.add_argument(
        "--baseline-lr",
        nargs="*",
        default=[],
        type=baseline_lr,
        metavar="ARCH=LR",
        help="a baseline's learning rate from an earlier grid on this protocol (skips its grid)",
    )
    parser.add_argument("--ours-lr", type=float, default=SHORT_BUDGET.lr)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def baseline_lr(text: str) -> tuple[str, float]:
    name, _, lr = text.partition("=")
    if name not in SETTINGS or name == OURS or not lr:
        baselines = [c for c in SETTINGS if c != OURS]
        raise argparse.ArgumentTypeError(f"expected BASELINE=LR with BASELINE one of {baselines}")
    return name, float(lr)


@dataclass
class Bench:
    """What every site's runs share."""

    args: argparse.Namespace
    cache: ActivationCache
    model: Any
    exclude: list[int]
    held_out: torch.Tensor
    recipe: Recipe
    held_out_acts: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(
        cls, args: argparse.Namespace, cache: ActivationCache, model: Any, recipe: Recipe
    ) -> "Bench":
        """The cache's first ``args.eval_tokens`` held-out tokens, in whole contexts."""
        held_out = cache.held_out_tokens()
        assert held_out is not None
        contexts = held_out[: math.ceil(args.eval_tokens / held_out.shape[1])]
        return cls(args, cache, model, special_token_ids(model), contexts, recipe)

    def train_and_reload(
        self, site: Site, stats: StreamStatistics, runs: list[Run]
    ) -> dict[str, SAE[Any]]:
        """Trained, saved and loaded back by stock SAELens: what a user gets."""
        saes = train_runs(runs, self.cache, site, stats, self.recipe, self.args)
        out = self.args.work / "saes" / site.hook_name
        dirs = {name: save(sae, out / name) for name, sae in saes.items()}
        return {name: SAE.load_from_disk(path) for name, path in dirs.items()}

    def held_out_fvu(self, site: Site, saes: dict[str, SAE[Any]]) -> dict[str, float]:
        """FVU on the held-out activations alone (no LM pass): what the grid is chosen by."""
        if site.hook_name not in self.held_out_acts:
            acts = [
                batch[site.hook_name]
                for batch in iter_site_activations(
                    self.model, [site], self.held_out, exclude_token_ids=self.exclude
                )
            ]
            self.held_out_acts[site.hook_name] = torch.cat(acts)
        x = self.held_out_acts[site.hook_name]
        total = (x - x.mean(dim=0)).pow(2).sum()
        with torch.no_grad():
            return {
                name: ((x - sae.decode(sae.encode(x))).pow(2).sum() / total).item()
                for name, sae in saes.items()
            }

    def evaluate(self, site: Site, saes: dict[str, SAE[Any]]) -> dict[str, SAEEvaluation]:
        found = evaluate_saes(
            self.model, saes, self.held_out, self.exclude, progress=f"evaluating {site.hook_name}"
        )
        for name, ev in found.items():
            print(
                f"{site.hook_name} {name}: L0 {ev.l0:.1f} FVU {ev.fvu:.4f} "
                f"dLM {ev.delta_lm_loss:.3f} dead {ev.frac_dead:.1%}",
                flush=True,
            )
        return found


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    cache = ensure_cache(args)
    model = load_model(cache.manifest["model"])
    recipe = replace(
        SHORT_BUDGET,
        batch_size=args.batch_size,
        lr=args.ours_lr,
        sae={**SHORT_BUDGET.sae, **args.sae_config},
    )
    bench = Bench.of(args, cache, model, recipe)
    chosen_lrs: dict[str, float] = dict(args.baseline_lr)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "sites": {}}
    baselines = [c for c in args.contenders if c != OURS]
    for spec in args.sites:
        (site,) = resolve_sites(model, [spec])
        stats = first_batch_statistics(cache, site.hook_name, args)
        trained: dict[str, SAE[Any]] = {}
        untuned = [c for c in baselines if c not in chosen_lrs]
        if untuned:  # the grid, on each baseline's middle setting, on the first site
            grid = [
                Run(ARCHITECTURES[c], SETTINGS[c][1], lr) for c in untuned for lr in args.lr_grid
            ]
            trained = bench.train_and_reload(site, stats, grid)
            fvus = bench.held_out_fvu(site, trained)
            for c in untuned:
                tried = [r for r in grid if r.architecture.name == c]
                chosen_lrs[c] = min(tried, key=lambda r: fvus[r.name]).lr
            results["lr_grid_fvu"] = fvus
            print(f"held-out FVU of the grid: {fvus}\nchosen: {chosen_lrs}", flush=True)
        lrs = {**chosen_lrs, OURS: recipe.lr}
        final_runs = {
            c: [Run(ARCHITECTURES[c], v, lrs[c]) for v in SETTINGS[c]] for c in args.contenders
        }
        todo = [r for runs in final_runs.values() for r in runs if r.name not in trained]
        trained.update(bench.train_and_reload(site, stats, todo))
        wanted = [r.name for runs in final_runs.values() for r in runs]
        evaluations = bench.evaluate(site, {name: trained[name] for name in wanted})
        final = {c: [evaluations[r.name] for r in runs] for c, runs in final_runs.items()}
        results["sites"][site.hook_name] = {
            "lr": {c: lrs[c] for c in args.contenders},
            "final": {c: [e.summary() for e in evs] for c, evs in final.items()},
        }
        plot_site(site.hook_name, results["sites"][site.hook_name]["final"], args.out)
    results["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "pareto.json", json.dumps(results, indent=2))
    write_text_atomic(args.out / "pareto.md", markdown(results))
    print(markdown(results))
    print(f"total {results['seconds'] / 60:.1f} min")


def ensure_cache(args: argparse.Namespace) -> ActivationCache:
    """The ``collect`` cache of the protocol, collected (or finished) when needed."""
    path = args.work / "cache"
    if (path / "manifest.json").exists() and ActivationCache(path).complete:
        return ActivationCache(path)
    job = TrainJob(
        sites=args.sites, tokens=args.tokens, eval_tokens=args.eval_tokens, out=path, seed=args.seed
    )
    return run_collect(job)


def batches_of(cache: ActivationCache, hook: str, batch_size: int, args: argparse.Namespace) -> Any:
    """The same batches, in the same order, for every SAE: ``--epochs`` seeded passes."""
    return chain.from_iterable(
        cache.iter_batches(batch_size, [hook], seed=args.seed + epoch)
        for epoch in range(args.epochs)
    )


def first_batch_statistics(
    cache: ActivationCache, hook: str, args: argparse.Namespace
) -> StreamStatistics:
    head = [batch[hook] for batch in islice(batches_of(cache, hook, args.batch_size, args), 8)]
    stats = StreamStatistics.of(torch.cat(head))
    return replace(stats, mean_squared_norm=cache.mean_squared_norm(hook))


def train_runs(
    runs: list[Run],
    cache: ActivationCache,
    site: Site,
    stats: StreamStatistics,
    recipe: Recipe,
    args: argparse.Namespace,
) -> dict[str, TrainingSAE[Any]]:
    """Each learning rate's SAEs in lockstep on the same batches."""
    hook = site.hook_name
    steps = cache.tokens // recipe.batch_size * args.epochs
    trained: dict[str, TrainingSAE[Any]] = {}
    for lr in sorted({run.lr for run in runs}):
        group = [run for run in runs if run.lr == lr]
        saes, scaling = {}, {}
        for run in group:
            torch.manual_seed(args.seed)
            sae = run.architecture.build(
                site.d_in, args.d_sae, run.value, recipe, {"device": "cpu"}
            )
            sae.cfg.metadata.hook_name = hook
            factor = set_normalisation(run.architecture, sae, stats, init_b_dec_to_mean=True)
            saes[run.name] = sae
            if factor is not None:
                scaling[run.name] = factor
        settings = replace(
            recipe.trainer_settings(steps * recipe.batch_size),
            lr=lr,
            extra={"dead_feature_window": DEAD_FEATURE_WINDOW},
        )
        train_in_lockstep(
            saes,
            dict.fromkeys(saes, hook),
            batches_of(cache, hook, recipe.batch_size, args),
            settings,
            progress=f"{hook}: {len(saes)} SAEs at lr {lr:g}",
            activation_scaling=scaling,
        )
        trained.update(saes)
    return trained


def save(sae: TrainingSAE[Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_dir_atomic(path, sae.save_inference_model, overwrite=True)
    return path


def plot_site(hook: str, final: dict[str, list[dict[str, float]]], out: Path) -> None:
    """``final``: each contender's ``SAEEvaluation.summary()`` rows, as in ``pareto.json``."""
    out.mkdir(parents=True, exist_ok=True)
    for metric, label, yscale in (
        # log: Gated's far points (L0 ~1 at 4 nats) would flatten the others' differences
        ("delta_lm_loss", "delta LM loss (nats)", "log"),
        ("fvu", "FVU", "log"),
        ("frac_dead", "dead fraction (held-out)", "linear"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for contender, rows in final.items():
            xs = [row["l0"] for row in rows]
            ys = [row[metric] for row in rows]
            style = "o-" if contender == OURS else "s--"
            ax.plot(xs, ys, style, label=ARCHITECTURES[contender].label)
        ax.set_xscale("log")
        ax.set_yscale(yscale)
        ax.set_xlabel("held-out L0")
        ax.set_ylabel(label)
        ax.set_title(f"{hook}, 250k tokens, d_sae 4096")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{hook}.{metric}.png", dpi=120)
        plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for hook, site in results["sites"].items():
        lines += [
            f"### {hook}",
            "",
            "| SAE | lr | L0 | FVU | delta LM loss | dead |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for contender, rows in site["final"].items():
            label = ARCHITECTURES[contender].label
            knob = ARCHITECTURES[contender].knob
            for value, row in zip(SETTINGS[contender], rows, strict=True):
                lines.append(
                    f"| {label}, {knob} {value:g} | {site['lr'][contender]:g} "
                    f"| {row['l0']:.1f} | {row['fvu']:.4f} | {row['delta_lm_loss']:.3f} "
                    f"| {row['frac_dead']:.1%} |"
                )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
