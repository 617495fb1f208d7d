"""PNG figures of training runs (matplotlib, headless)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curve(
    history: dict[str, list[float]], path: Path, target_l0: float | None = None
) -> Path:
    """Plot each series of ``history`` (keyed by name, one value per step) on its own axis."""
    names = [name for name in history if name != "step"]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4))
    for ax, name in zip(axes if len(names) > 1 else [axes], names, strict=True):
        ax.plot(history["step"], history[name], lw=1)
        if name == "l0" and target_l0 is not None:
            ax.axhline(target_l0, color="k", ls="--", lw=0.8, label=f"target {target_l0:g}")
            ax.legend()
        ax.set_xlabel("step")
        ax.set_title(name)
        if name in ("mse_loss", "l0", "l0_coefficient"):
            ax.set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
