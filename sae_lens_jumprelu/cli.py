"""The ``sae-jumprelu`` command line."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sae_lens_jumprelu.recipes import RECIPES


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
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if getattr(args, "steps", 1) <= 0:
        raise SystemExit("sae-jumprelu: --steps must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "demo":
        from sae_lens_jumprelu.demo import run_demo

        result = run_demo(args.out, args.target_l0, args.steps, args.d_sae, args.recipe, args.seed)
        s = result.scores
        out = sys.stdout
        out.write(
            f"held-out: L0 {s.l0:.2f} (target {args.target_l0:g}, true features per sample "
            f"{s.true_l0:.2f})  FVU {s.fvu:.4f}  MCC {s.mcc:.3f}  dead {s.frac_dead:.1%}\n"
            f"SAE (SAELens 'jumprelu' format): {result.sae_dir}\n"
            f"training curve: {result.curve_png}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
