"""PNG figures of training runs and evaluations (matplotlib, headless)."""

from pathlib import Path

import matplotlib

from sae_lens_jumprelu.atomic import write_file_atomic

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


def plot_feature_frequencies(
    frequencies: dict[str, list[float]], path: Path, tokens: int | None = None
) -> Path:
    """Histogram of log10 firing frequency per latent, one outline per SAE, as the paper's
    figures; latents that never fired have no logarithm and are counted in the legend instead."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    alive = {name: np.asarray(f)[np.asarray(f) > 0] for name, f in frequencies.items()}
    lowest = min((a.min() for a in alive.values() if a.size), default=1e-3)
    if tokens:
        lowest = min(lowest, 1 / tokens)  # the rarest frequency these tokens can show
    edges = np.linspace(np.floor(np.log10(lowest)), 0, 41)
    for name, freq in frequencies.items():
        dead = len(freq) - alive[name].size
        label = f"{name}: {dead} of {len(freq)} dead ({dead / max(1, len(freq)):.1%})"
        ax.hist(np.log10(alive[name]), bins=edges, histtype="step", lw=1.2, label=label)
    ax.axvline(-1, color="k", ls=":", lw=0.8)  # the ">10% of tokens" line of frac_over_10pct
    ax.set_xlabel("log10 firing frequency (fraction of tokens)")
    ax.set_ylabel("latents")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_l0_histograms(histograms: dict[str, list[int]], path: Path) -> Path:
    """Tokens per per-token L0 (``histograms[name][k]``: tokens with exactly k active latents),
    with each SAE's mean marked."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, counts in histograms.items():
        counts_arr = np.asarray(counts, dtype=float)
        l0 = np.arange(len(counts_arr))
        mean = (l0 * counts_arr).sum() / counts_arr.sum()
        line = ax.step(l0, counts_arr, where="mid", lw=1.2, label=f"{name} (mean {mean:.1f})")
        ax.axvline(mean, color=line[0].get_color(), ls="--", lw=0.8)
    ax.set_xlabel("L0 of a token (active latents)")
    ax.set_ylabel("tokens")
    ax.set_yscale("log")  # the tail matters: a few tokens reached L0 662 of 2048 (README, eval)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: "plt.Figure", path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), overwrite=True)
    plt.close(fig)
    return path
