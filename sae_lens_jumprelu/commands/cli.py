"""The ``sae-jumprelu`` command line: one table of subcommands, each with the function that adds
its flags (generated from its job dataclass by ``flags``, whose docstrings are the ``--help``)
and the function that runs it and prints its report."""

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sae_lens_jumprelu.commands.flags import add_job_flags, job_from


@dataclass(frozen=True)
class Command:
    """One subcommand."""

    help: str
    add_flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    """Runs it from the parsed flags and prints its report; the exit code."""
    description: str | None = None
    epilog: Callable[[], str] | None = None
    """The text after the flags (built when the parser is, so listing it imports nothing
    before then)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-jumprelu", description="JumpReLU SAEs trained with straight-through L0 estimators"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(
            name,
            help=command.help,
            description=command.description or command.help,
            epilog=command.epilog() if command.epilog else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_flags(sub)
    return parser


def _demo_flags(demo: argparse.ArgumentParser) -> None:
    from sae_lens_jumprelu.commands.demo import DemoJob

    add_job_flags(demo, DemoJob)


def _train_flags(train: argparse.ArgumentParser) -> None:
    from sae_lens_jumprelu.commands.train_job import TrainJob

    sparsity = ("target_l0", "l0_coefficient")
    add_job_flags(
        train, TrainJob, tuple(f for f in TrainJob.__dataclass_fields__ if f not in sparsity)
    )
    # one SAE per value and site either way; the two modes do not mix
    add_job_flags(train.add_mutually_exclusive_group(), TrainJob, sparsity)


# What ``collect`` is told: where the activations come from, and where they go.
_COLLECT_FIELDS = (
    "sites", "model", "dataset", "tokens", "context_size", "eval_tokens", "exclude_special_tokens",
    "device", "dtype", "seed", "out",
)  # fmt: skip


def _collect_flags(collect: argparse.ArgumentParser) -> None:
    from sae_lens_jumprelu.commands.collect import CacheLayout
    from sae_lens_jumprelu.commands.train_job import TrainJob

    add_job_flags(collect, TrainJob, _COLLECT_FIELDS, required=("out",))
    add_job_flags(collect, CacheLayout)


def _sweep_flags(sweep: argparse.ArgumentParser) -> None:
    from sae_lens_jumprelu.commands.sweep import SweepJob

    add_job_flags(sweep, SweepJob, types_={"architectures": _architecture_list, "grids": _grid})


def _sweep_epilog() -> str:
    from sae_lens_jumprelu.architectures import ARCHITECTURES

    return "architectures (knob: default grid):\n" + "\n".join(
        f"  {a.name:20s} {a.knob}: {','.join(f'{v:g}' for v in a.grid)}"
        for a in ARCHITECTURES.values()
    )


def _eval_flags(ev: argparse.ArgumentParser) -> None:
    from sae_lens_jumprelu.commands.eval import EvalJob

    add_job_flags(ev, EvalJob)


def _dashboard_flags(dashboard: argparse.ArgumentParser) -> None:
    from sae_lens_jumprelu.dashboard.command import DashboardJob, parse_features

    add_job_flags(dashboard, DashboardJob, types_={"features": parse_features}, required=("out",))


def _architecture_list(text: str) -> tuple[str, ...]:
    from sae_lens_jumprelu.architectures import ARCHITECTURES

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ARCHITECTURES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown architecture(s) {unknown or [text]}; choose from {', '.join(ARCHITECTURES)}"
        )
    return names


def _grid(text: str) -> tuple[str, tuple[float, ...]]:
    name, sep, values = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: write ARCH=V1,V2,..., e.g. topk=8,16,32")
    (name,) = _architecture_list(name)
    try:
        grid = tuple(float(v) for v in values.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the values must be numbers") from None
    return name, grid


def _convert_flags(convert: argparse.ArgumentParser) -> None:
    from sae_lens_jumprelu.commands.convert import ConvertJob
    from sae_lens_jumprelu.convert import TARGETS

    add_job_flags(convert, ConvertJob, choices={"to": list(TARGETS)}, required=("to",))


def _convert_epilog() -> str:
    from sae_lens_jumprelu.convert import TARGETS

    return "targets:\n" + "\n".join(f"  {name:20s} {t.description}" for name, t in TARGETS.items())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def run_convert_command(args: argparse.Namespace) -> int:
    from sae_lens_jumprelu.commands.convert import ConvertJob, run_convert

    job = job_from(ConvertJob, args)
    result = run_convert(job)
    out = sys.stdout
    out.write(f"{job.src} ({result.source_format}) -> {job.dst} ({result.target})\n")
    if result.clamped:
        out.write(
            f"{len(result.clamped)} Gated latents had a negative implied threshold, set to 0 "
            f"(exact: the JumpReLU forward applies ReLU): {result.clamped[:20]}\n"
        )
    per_latent = result.verification.per_latent_max_abs
    for issue in result.issues:
        out.write(f"INEXACT latents {issue.latents[:20]}: {issue.reason}\n")
        worst = {i: float(per_latent[i]) for i in issue.latents[:20]}
        out.write(f"  max |f_src - f_dst| per latent: {worst}\n")
    out.write(result.verification.summary() + "\n")
    return 0


def run_eval_command(args: argparse.Namespace) -> int:
    from sae_lens_jumprelu.commands.eval import EvalJob, run_eval

    result = run_eval(job_from(EvalJob, args))
    e = result.evaluation
    score = "" if e.ce_loss_score is None else f"  CE recovered {e.ce_loss_score:.3f}"
    sys.stdout.write(
        f"{args.sae} on {e.hook_name}: L0 {e.l0:.1f} (p10 {e.l0_p10}, median {e.l0_p50}, "
        f"p90 {e.l0_p90}, max {e.l0_max})  FVU {e.fvu:.4f}  delta LM loss "
        f"{e.delta_lm_loss:.4f} (clean CE {e.ce_clean:.3f}){score}  dead {e.frac_dead:.1%}  "
        f">10% {e.frac_over_10pct:.1%}  [{e.tokens} tokens]\n"
        f"metrics: {result.files['metrics.json']}  table: {result.files['metrics.md']}  "
        f"plots: {result.files['feature_frequency.png']}, {result.files['l0_histogram.png']}\n"
    )
    return 0


TARGET_TOLERANCE = 0.1
"""Held-out L0 further than this (relative) from its target is warned about."""


def run_train_command(args: argparse.Namespace) -> int:
    from sae_lens_jumprelu.commands.train import run_train
    from sae_lens_jumprelu.commands.train_job import TrainJob

    result = run_train(job_from(TrainJob, args))
    if result is None:  # a distributed run's other ranks: rank 0 reports
        return 0
    out = sys.stdout
    for name, e in result.evaluations.items():
        target = result.targets.get(name)
        versus = "" if target is None else f" (target {target:g})"
        out.write(
            f"{name}: held-out L0 {e.l0:.1f}{versus}  FVU {e.fvu:.4f}  delta LM loss "
            f"{e.delta_lm_loss:.4f} (clean CE {e.ce_clean:.3f})  dead {e.frac_dead:.1%}  "
            f"[{e.tokens} tokens]\n"
            f"  SAE (SAELens 'jumprelu'): {result.sae_dirs[name]}\n"
            f"  training curve: {result.curves[name]}\n"
        )
        if target is not None and abs(e.l0 / target - 1) > TARGET_TOLERANCE:
            sys.stderr.write(
                f"warning: {name} reached held-out L0 {e.l0:.1f}, {e.l0 / target - 1:+.0%} from "
                f"its target {target:g}: train on more tokens (--tokens) or check the training "
                "curve's lambda\n"
            )
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    out.write(f"metrics: {result.out / 'metrics.json'}  ({timing})\n")
    return 0


def run_sweep_command(args: argparse.Namespace) -> int:
    from sae_lens_jumprelu.commands.sweep import SweepJob, run_sweep

    result = run_sweep(job_from(SweepJob, args))
    out = sys.stdout
    out.write((result.out / "results.md").read_text())
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    out.write(f"results: {result.files['csv']}  figures: {result.out}/*.png  ({timing})\n")
    return 0


def run_collect_command(args: argparse.Namespace) -> int:
    from sae_lens_jumprelu.commands.collect import CacheLayout, run_collect
    from sae_lens_jumprelu.commands.train_job import TrainJob

    cache = run_collect(job_from(TrainJob, args), job_from(CacheLayout, args))
    state = "complete" if cache.complete else "INCOMPLETE"
    sys.stdout.write(
        f"{cache.path}: {cache.tokens} tokens at {len(cache.sites)} site(s), {state}\n"
        + "".join(
            f"  {s.hook_name}  d_in {s.d_in}  E||x||^2 {cache.mean_squared_norm(s.hook_name):.4g}\n"
            for s in cache.sites
        )
    )
    return 0


def run_dashboard_command(args: argparse.Namespace) -> int:
    from sae_lens_jumprelu.dashboard.command import DashboardJob, run_dashboard

    dashboard = run_dashboard(job_from(DashboardJob, args))
    sys.stdout.write(
        f"{dashboard.out / 'index.html'}: {len(dashboard.features)} feature pages over "
        f"{dashboard.n_tokens} tokens\n"
    )
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    from sae_lens_jumprelu.commands.demo import DemoJob, run_demo

    result = run_demo(job_from(DemoJob, args))
    s = result.scores
    sys.stdout.write(
        f"held-out: L0 {s.l0:.2f} (target {args.target_l0:g}, true features per sample "
        f"{s.true_l0:.2f})  FVU {s.fvu:.4f}  MCC {s.mcc:.3f}  dead {s.frac_dead:.1%}\n"
        f"SAE (SAELens 'jumprelu' format): {result.sae_dir}\n"
        f"training curve: {result.curve_png}\n"
    )
    return 0


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "train on SAELens's synthetic ground-truth data, save, reload with plain SAELens",
        _demo_flags,
        run_demo_command,
    ),
    "train": Command(
        "train JumpReLU SAEs on a language model's activations (default: the embedded "
        "Gemma 3 270M's middle residual stream, offline)",
        _train_flags,
        run_train_command,
    ),
    "collect": Command(
        "write activations at some sites to a resumable disk cache",
        _collect_flags,
        run_collect_command,
    ),
    "sweep": Command(
        "train JumpReLU (ours and SAELens's), TopK, BatchTopK and Gated SAEs on one "
        "activation stream over grids of sparsity settings; compare delta LM loss and FVU vs L0",
        _sweep_flags,
        run_sweep_command,
        epilog=_sweep_epilog,
    ),
    "convert": Command(
        "convert SAE weights exactly between formats (source format detected from its files)",
        _convert_flags,
        run_convert_command,
        epilog=_convert_epilog,
    ),
    "eval": Command(
        "L0 (and its distribution), FVU, delta LM loss, CE-loss recovered and firing "
        "frequencies of any SAE spliced into its language model",
        _eval_flags,
        run_eval_command,
        description="Evaluate an SAE spliced into a language model. Model, hook, dataset and "
        "context size default to what the SAE's metadata names (else the embedded "
        "gemma-3-270m and text); flags override them.",
    ),
    "dashboard": Command(
        "write a static HTML feature dashboard (DIR/index.html, no server, no network)",
        _dashboard_flags,
        run_dashboard_command,
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return _friendly(COMMANDS[args.command].run, args)


DEBUG_ENV = "SAE_JUMPRELU_TRACEBACK"
"""Set to 1 to see the traceback of an unexpected error instead of its one-line summary."""


def _friendly(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Every failure as one line naming the problem, not a traceback; Ctrl-C exits 130. The
    outputs are staged beside their destination, so an interrupted command leaves no part."""
    from sae_lens_jumprelu.training.distributed import RankFailureError

    name = f"sae-jumprelu {args.command}"
    try:
        return command(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{name}: interrupted; no partial output was left, earlier ones kept\n")
        return 130
    except RankFailureError as error:  # a distributed job lost a rank: stop, do not hang
        sys.stderr.write(f"{name}: error: {error}\n")
        return 1
    # our input errors (CorpusError, OutputExistsError...; IndexError: a feature index out of range)
    except (ValueError, OSError, IndexError) as error:
        sys.stderr.write(f"{name}: error: {error}\n")
        return 2
    except Exception as error:  # a bug or an upstream failure: the summary, not the traceback
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        sys.stderr.write(
            f"{name}: unexpected error: {type(error).__name__}: {error}\n"
            f"  (rerun with {DEBUG_ENV}=1 for the traceback, and please report it)\n"
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
