"""The ``sae-jumprelu`` command line."""

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens_jumprelu.recipes import RECIPES

if TYPE_CHECKING:
    from sae_lens_jumprelu.commands.sweep import SweepJob
    from sae_lens_jumprelu.commands.train_job import TrainJob


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-jumprelu", description="JumpReLU SAEs trained with straight-through L0 estimators"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train on SAELens's synthetic ground-truth data, save, reload with plain SAELens",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("sae-jumprelu-demo"), help="output directory"
    )
    demo.add_argument("--target-l0", type=float, default=8.0, help="mean active latents to reach")
    demo.add_argument("--steps", type=int, default=800, help="training steps of 4096 samples")
    demo.add_argument("--d-sae", type=int, default=512, help="number of latents")
    demo.add_argument("--recipe", choices=sorted(RECIPES), default="short_budget")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    _add_train_parsers(commands)
    _add_sweep_parser(commands)
    _add_convert_parser(commands)
    _add_eval_parser(commands)
    from sae_lens_jumprelu.dashboard.command import add_dashboard_parser

    add_dashboard_parser(commands)
    return parser


def _add_train_parsers(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from sae_lens_jumprelu.commands.train_job import TrainJob

    train = commands.add_parser(
        "train",
        help="train JumpReLU SAEs on a language model's activations (default: the embedded "
        "Gemma 3 270M's middle residual stream, offline)",
    )
    collect = commands.add_parser(
        "collect", help="write activations at some sites to a resumable disk cache"
    )
    defaults = TrainJob()
    for sub in (train, collect):
        sub.add_argument(
            "--site",
            action="append",
            default=[],
            dest="sites",
            help="resid:L, attn:L, mlp:L (L: 6, 0-5, 3,7 or *) or a hook name; "
            "repeatable, one SAE per site (default: resid at the middle layer)",
        )
        _add_run_flags(sub, defaults)
    collect.add_argument("--out", type=Path, required=True, help="cache directory")
    collect.add_argument("--contexts-per-shard", type=_positive_int, default=64)
    _add_sae_flags(train, defaults)
    sparsity = train.add_mutually_exclusive_group()
    sparsity.add_argument(
        "--target-l0",
        type=float,
        action="append",
        default=[],
        help="mean active latents to reach (default 32); repeat it for several SAEs per site, "
        "all fed by the same forward pass",
    )
    sparsity.add_argument(
        "--l0-coefficient",
        type=float,
        action="append",
        default=[],
        help="fixed lambda of the L0 penalty, the paper's mode; repeatable like --target-l0",
    )
    from sae_lens_jumprelu.commands.train_job import DISTRIBUTED_MODES

    train.add_argument(
        "--distributed",
        choices=DISTRIBUTED_MODES,
        default=defaults.distributed,
        help="under torchrun: 'data' (each rank runs the model on its share of the text, "
        "gradients of every SAE all-reduced) or 'sae' (SAEs spread over ranks, activations "
        "exchanged all-to-all)",
    )
    train.add_argument(
        "--dist-timeout",
        type=float,
        default=defaults.dist_timeout,
        help="seconds a rank waits for the others before the job fails "
        f"(default {defaults.dist_timeout:g})",
    )
    train.add_argument(
        "--checkpoint-every",
        type=int,
        default=defaults.checkpoint_every,
        help="steps between checkpoints in OUT/checkpoints (distributed runs; default: none)",
    )
    train.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="checkpoint to continue (OUT/checkpoints or a step_N in it), on any number of ranks",
    )


def _add_sweep_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from sae_lens_jumprelu.architectures import ARCHITECTURES
    from sae_lens_jumprelu.commands.sweep import SweepJob

    defaults = SweepJob()
    sweep = commands.add_parser(
        "sweep",
        help="train JumpReLU (ours and SAELens's), TopK, BatchTopK and Gated SAEs on one "
        "activation stream over grids of sparsity settings; compare delta LM loss and FVU vs L0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="architectures (knob: default grid):\n"
        + "\n".join(
            f"  {a.name:20s} {a.knob}: {','.join(f'{v:g}' for v in a.grid)}"
            for a in ARCHITECTURES.values()
        ),
    )
    sweep.add_argument(
        "--site",
        default=None,
        help="one site: resid:L, attn:L, mlp:L or a hook name (default: resid at the middle layer)",
    )
    _add_run_flags(sweep, defaults)
    _add_sae_flags(sweep, defaults)
    sweep.add_argument(
        "--architectures",
        type=_architecture_list,
        default=defaults.architectures,
        help=f"comma-separated (default: all: {','.join(ARCHITECTURES)})",
    )
    sweep.add_argument(
        "--grid",
        action="append",
        type=_grid,
        default=[],
        dest="grids",
        metavar="ARCH=V1,V2,...",
        help="sparsity settings of one architecture (its knob, see below); repeatable",
    )


def _add_run_flags(sub: argparse.ArgumentParser, defaults: Any) -> None:
    """Model, text, budget and device flags of ``train``, ``collect`` and ``sweep`` (defaults from
    their job dataclass)."""
    sub.add_argument(
        "--model",
        default=None,
        help="TransformerLens model name (default: the embedded gemma-3-270m)",
    )
    sub.add_argument(
        "--dataset",
        default=None,
        help="HF dataset name or local .txt/.jsonl/.parquet file or directory "
        "(default: embedded text)",
    )
    sub.add_argument(
        "--tokens",
        type=_positive_int,
        default=defaults.tokens,
        help=f"training tokens (default {defaults.tokens})",
    )
    sub.add_argument("--context-size", type=_positive_int, default=defaults.context_size)
    sub.add_argument("--device", default=defaults.device)
    sub.add_argument(
        "--dtype",
        default=defaults.dtype,
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the language model",
    )
    sub.add_argument("--seed", type=int, default=defaults.seed)
    sub.add_argument(
        "--eval-tokens",
        type=_positive_int,
        default=defaults.eval_tokens,
        help="held-out tokens (train, sweep: evaluated on; collect: stored) "
        f"(default {defaults.eval_tokens})",
    )
    sub.add_argument(
        "--keep-special-tokens",
        dest="exclude_special_tokens",
        action="store_false",
        help="keep BOS/EOS/pad activations (dropped by default, as in the paper)",
    )


def _add_sae_flags(sub: argparse.ArgumentParser, defaults: Any) -> None:
    """What ``train`` and ``sweep`` train on and with."""
    sub.add_argument("--out", type=Path, default=defaults.out)
    sub.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out once the new output is complete (refused without it)",
    )
    sub.add_argument(
        "--activations",
        type=Path,
        default=None,
        help="train from a cache written by `collect` instead of the model",
    )
    sub.add_argument(
        "--d-sae",
        type=_positive_int,
        default=defaults.d_sae,
        help=f"latents per SAE (default {defaults.d_sae})",
    )
    sub.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=defaults.recipe,
        help="recipe of our JumpReLU SAEs",
    )
    sub.add_argument(
        "--batch-size",
        type=_positive_int,
        default=defaults.batch_size,
        help=f"activations per step (default {defaults.batch_size})",
    )
    sub.add_argument(
        "--lr",
        type=_positive_float,
        default=defaults.lr,
        help="learning rate (default: the recipe's)"
        if defaults.lr is None
        else f"learning rate (default {defaults.lr:g})",
    )
    sub.add_argument(
        "--sae-config",
        metavar="FIELD=VALUE",
        type=_config_item,
        action="append",
        default=[],
        help="a JumpReLUSTETrainingSAEConfig field of our SAEs over the recipe's, e.g. "
        "jumprelu_kernel=triangle or max_grad_norm=null (VALUE is read as JSON, else as a "
        "string); repeatable",
    )


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


def _config_item(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _add_convert_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from sae_lens_jumprelu.convert import TARGETS

    convert = commands.add_parser(
        "convert",
        help="convert SAE weights exactly between formats (source format detected from its files)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="targets:\n"
        + "\n".join(f"  {name:20s} {t.description}" for name, t in TARGETS.items()),
    )
    convert.add_argument(
        "src", type=Path, help="SAELens dir, dictionary_learning dir or params file"
    )
    convert.add_argument("dst", type=Path, help="output file (gemma-scope) or directory")
    convert.add_argument("--to", required=True, choices=list(TARGETS), help="target format")
    convert.add_argument(
        "--allow-inexact",
        action="store_true",
        help="write even if the result computes a different function; report the latents",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    convert.add_argument(
        "--apply-b-dec-to-input",
        choices=["true", "false"],
        default=None,
        help="subtract b_dec from inputs in the result (default: as the source; gemma-scope: "
        "false)",
    )
    convert.add_argument(
        "--release-path",
        default=None,
        help="Gemma Scope release path to infer the hook from, e.g. "
        "gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71 (default: SRC's own path)",
    )
    convert.add_argument("--hook-name", default=None, help="hook point to record in the result")
    convert.add_argument("--d-in", type=int, default=None, help="check the SAE's input width")
    convert.add_argument("--n-inputs", type=int, default=512, help="random inputs for verification")


def _add_eval_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from sae_lens_jumprelu.commands.eval import DEFAULT_CONTEXT_SIZE, EvalJob
    from sae_lens_jumprelu.sae_source import ACCEPTED

    defaults = EvalJob()
    ev = commands.add_parser(
        "eval",
        help="L0 (and its distribution), FVU, delta LM loss, CE-loss recovered and firing "
        "frequencies of any SAE spliced into its language model",
        description="Evaluate an SAE spliced into a language model. Model, hook, dataset and "
        "context size default to what the SAE's metadata names (else the embedded "
        "gemma-3-270m and text); flags override them.",
    )
    ev.add_argument("sae", help=ACCEPTED)
    ev.add_argument(
        "--model",
        default=None,
        help="TransformerLens model name (default: the SAE's metadata, else the embedded "
        "gemma-3-270m)",
    )
    ev.add_argument(
        "--dataset",
        default=None,
        help="HF dataset name or local .txt/.jsonl/.parquet file or directory (default: the "
        "SAE's metadata dataset_path, else the embedded text); the SAE's own training dataset "
        "is read through its held-out split",
    )
    ev.add_argument(
        "--tokens",
        type=_positive_int,
        default=defaults.tokens,
        help=f"tokens to evaluate on, in whole contexts (default {defaults.tokens})",
    )
    ev.add_argument(
        "--hook",
        default=None,
        help="hook name or site (resid:L, attn:L, mlp:L) the SAE reads (default: its metadata; "
        "required for a Gemma Scope file outside its release path)",
    )
    ev.add_argument(
        "--context-size",
        type=_positive_int,
        default=None,
        help=f"tokens per context (default: the SAE's metadata, else {DEFAULT_CONTEXT_SIZE})",
    )
    ev.add_argument("--out", type=Path, default=defaults.out, help="output directory")
    ev.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out once the new report is complete (refused without it)",
    )
    ev.add_argument("--device", default=defaults.device)
    ev.add_argument(
        "--dtype",
        default=defaults.dtype,
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the language model",
    )
    ev.add_argument(
        "--keep-special-tokens",
        dest="exclude_special_tokens",
        action="store_false",
        help="count BOS/EOS/pad tokens in the metrics (left out by default, as in the paper)",
    )
    ev.add_argument(
        "--no-zero-ablation",
        dest="zero_ablation",
        action="store_false",
        help="skip the zero-ablation pass (no CE-loss recovered; one forward pass less)",
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if getattr(args, "steps", 1) <= 0:
        raise SystemExit("sae-jumprelu: --steps must be positive")
    if args.command == "demo" and not (args.target_l0 > 0 and 0 < args.target_l0 < args.d_sae):
        raise SystemExit(
            f"sae-jumprelu demo: --target-l0 must be in (0, --d-sae); got {args.target_l0:g} "
            f"with --d-sae {args.d_sae}"
        )
    if getattr(args, "n_inputs", 2) <= 1:
        raise SystemExit("sae-jumprelu: --n-inputs must be at least 2")
    return args


def run_convert(args: argparse.Namespace) -> int:
    from sae_lens_jumprelu.convert import convert

    apply = None if args.apply_b_dec_to_input is None else args.apply_b_dec_to_input == "true"
    result = convert(
        args.src,
        args.dst,
        args.to,
        allow_inexact=args.allow_inexact,
        overwrite=args.overwrite,
        apply_b_dec_to_input=apply,
        release_path=args.release_path,
        hook_name=args.hook_name,
        d_in=args.d_in,
        n_inputs=args.n_inputs,
    )
    out = sys.stdout
    out.write(f"{args.src} ({result.source_format}) -> {args.dst} ({result.target})\n")
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

    fields = set(EvalJob.__dataclass_fields__)
    result = run_eval(EvalJob(**{k: v for k, v in vars(args).items() if k in fields}))
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


def _job(args: argparse.Namespace) -> "TrainJob":
    from sae_lens_jumprelu.commands.train_job import TrainJob

    fields = set(TrainJob.__dataclass_fields__)
    values = {k: v for k, v in vars(args).items() if k in fields}
    return TrainJob(**{**values, "sae_config": dict(getattr(args, "sae_config", []))})


TARGET_TOLERANCE = 0.1
"""Held-out L0 further than this (relative) from its target is warned about."""


def run_train_command(args: argparse.Namespace) -> int:
    from sae_lens_jumprelu.commands.train import run_train

    result = run_train(_job(args))
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


def _sweep_job(args: argparse.Namespace) -> "SweepJob":
    from sae_lens_jumprelu.commands.sweep import SweepJob

    fields = set(SweepJob.__dataclass_fields__)
    values = {k: v for k, v in vars(args).items() if k in fields}
    return SweepJob(**{**values, "grids": dict(args.grids), "sae_config": dict(args.sae_config)})


def run_sweep_command(args: argparse.Namespace) -> int:
    from sae_lens_jumprelu.commands.sweep import run_sweep

    result = run_sweep(_sweep_job(args))
    out = sys.stdout
    out.write((result.out / "results.md").read_text())
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    out.write(f"results: {result.files['csv']}  figures: {result.out}/*.png  ({timing})\n")
    return 0


def run_collect_command(args: argparse.Namespace) -> int:
    from sae_lens_jumprelu.commands.collect import run_collect

    cache = run_collect(_job(args), args.contexts_per_shard)
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
    from sae_lens_jumprelu.dashboard.command import run_dashboard

    dashboard = run_dashboard(args)
    sys.stdout.write(
        f"{dashboard.out / 'index.html'}: {len(dashboard.features)} feature pages over "
        f"{dashboard.n_tokens} tokens\n"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "convert": run_convert,
        "train": run_train_command,
        "collect": run_collect_command,
        "eval": run_eval_command,
        "dashboard": run_dashboard_command,
        "sweep": run_sweep_command,
        "demo": run_demo_command,
    }
    return _friendly(commands[args.command], args)


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


def run_demo_command(args: argparse.Namespace) -> int:
    from sae_lens_jumprelu.commands.demo import run_demo

    result = run_demo(
        args.out, args.target_l0, args.steps, args.d_sae, args.recipe, args.seed, args.overwrite
    )
    s = result.scores
    sys.stdout.write(
        f"held-out: L0 {s.l0:.2f} (target {args.target_l0:g}, true features per sample "
        f"{s.true_l0:.2f})  FVU {s.fvu:.4f}  MCC {s.mcc:.3f}  dead {s.frac_dead:.1%}\n"
        f"SAE (SAELens 'jumprelu' format): {result.sae_dir}\n"
        f"training curve: {result.curve_png}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
