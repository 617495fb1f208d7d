"""The report of ``sae-jumprelu sweep``: results.csv, results.md, run.json and paper-style PNGs
(delta LM loss vs L0, FVU vs L0, firing-frequency histograms), all written atomically."""

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sae_lens_jumprelu.architectures import ARCHITECTURES, Architecture  # noqa: E402
from sae_lens_jumprelu.atomic import write_file_atomic  # noqa: E402
from sae_lens_jumprelu.evals import SAEEvaluation  # noqa: E402

# Frequencies below this count as "never fired" in the histograms (log10 axis).
_NEVER = 1e-7


@dataclass(frozen=True)
class SweepRow:
    """One SAE of the sweep: its setting and held-out metrics (one line of results.csv)."""

    architecture: str
    setting: str
    """``knob=value``, e.g. ``k=32``."""
    value: float
    """The value of the architecture's knob."""
    l0: float
    fvu: float
    delta_lm_loss: float
    frac_dead: float
    frac_over_10pct: float
    ce_clean: float
    ce_spliced: float
    train_tokens: int
    """Activations this SAE trained on (the same for every SAE of a sweep)."""
    eval_tokens: int
    sae_dir: str

    @classmethod
    def of(
        cls,
        arch: Architecture,
        value: float,
        evaluation: SAEEvaluation,
        train_tokens: int,
        sae_dir: Path,
    ) -> "SweepRow":
        e = evaluation
        return cls(
            architecture=arch.name,
            setting=arch.setting(value),
            value=value,
            l0=e.l0,
            fvu=e.fvu,
            delta_lm_loss=e.delta_lm_loss,
            frac_dead=e.frac_dead,
            frac_over_10pct=e.frac_over_10pct,
            ce_clean=e.ce_clean,
            ce_spliced=e.ce_spliced,
            train_tokens=train_tokens,
            eval_tokens=e.tokens,
            sae_dir=str(sae_dir),
        )


def write_report(
    rows: list[SweepRow],
    frequencies: dict[str, list[float]],
    meta: dict[str, Any],
    out: Path,
) -> dict[str, Path]:
    """Every output file of a sweep; ``frequencies`` is keyed ``architecture/setting``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "csv": out / "results.csv",
        "md": out / "results.md",
        "json": out / "run.json",
        "delta_lm_loss": out / "delta_lm_loss_vs_l0.png",
        "fvu": out / "fvu_vs_l0.png",
        "frequency": out / "feature_frequency.png",
    }
    _write_text(files["csv"], results_csv(rows))
    _write_text(files["md"], results_markdown(rows, meta))
    _write_text(files["json"], json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=2))
    title = f"{meta.get('model', '')} {meta.get('hook_name', '')}"
    plot_metric_vs_l0(rows, "delta_lm_loss", "delta LM loss (nats)", title, files["delta_lm_loss"])
    plot_metric_vs_l0(rows, "fvu", "FVU", title, files["fvu"])
    plot_frequencies(rows, frequencies, files["frequency"])
    return files


def results_csv(rows: list[SweepRow]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(rows[0])), lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    return buffer.getvalue()


def results_markdown(rows: list[SweepRow], meta: dict[str, Any]) -> str:
    job = meta.get("job", {})
    head = (
        f"{meta.get('model')} `{meta.get('hook_name')}`, {rows[0].train_tokens} training tokens "
        f"per SAE, d_sae {job.get('d_sae')}, held-out {rows[0].eval_tokens} tokens "
        f"(clean CE {rows[0].ce_clean:.3f})\n\n"
        "| architecture | setting | L0 | FVU | delta LM loss | dead | >10% |\n"
        "|---|---|---:|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r.architecture} | {r.setting} | {r.l0:.1f} | {r.fvu:.4f} | {r.delta_lm_loss:.4f} "
        f"| {r.frac_dead:.1%} | {r.frac_over_10pct:.1%} |\n"
        for r in rows
    )
    return head + body


def plot_metric_vs_l0(
    rows: list[SweepRow], metric: str, ylabel: str, title: str, path: Path
) -> Path:
    """One curve per architecture, its points sorted by L0 (log axis, as in the paper)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for arch, group in _by_architecture(rows).items():
        group = sorted(group, key=lambda r: r.l0)
        label = f"{ARCHITECTURES[arch].label} ({arch})"
        ax.plot([r.l0 for r in group], [getattr(r, metric) for r in group], "o-", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("L0 (held-out mean active latents)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)
    return path


def plot_frequencies(rows: list[SweepRow], frequencies: dict[str, list[float]], path: Path) -> Path:
    """Histograms of log10 firing frequency, one panel per architecture, one line per setting;
    latents that never fired are counted at the left edge."""
    groups = _by_architecture(rows)
    cols = min(3, len(groups))
    nrows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    bins = np.linspace(math.log10(_NEVER), 0, 50)
    for ax, (arch, group) in zip(axes.flat, groups.items(), strict=False):
        for r in sorted(group, key=lambda r: r.l0):
            freq = np.asarray(frequencies[f"{r.architecture}/{r.setting}"])
            logs = np.log10(np.clip(freq, _NEVER, None))
            ax.hist(logs, bins=bins, histtype="step", label=f"{r.setting} (L0 {r.l0:.0f})")
        ax.set_title(f"{ARCHITECTURES[arch].label} ({arch})", fontsize=9)
        ax.set_xlabel("log10 firing frequency")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.tight_layout()
    _save_figure(fig, path)
    return path


def _by_architecture(rows: list[SweepRow]) -> dict[str, list[SweepRow]]:
    groups: dict[str, list[SweepRow]] = {}
    for r in rows:
        groups.setdefault(r.architecture, []).append(r)
    return groups


def _write_text(path: Path, text: str) -> None:
    write_file_atomic(path, lambda tmp: tmp.write_text(text), overwrite=True)


def _save_figure(fig: Any, path: Path) -> None:
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), overwrite=True)
    plt.close(fig)
