"""What ``train``, ``collect`` and ``sweep`` are all told: the model, its text, the budget, and
how SAEs are trained. Each field is declared (and documented) once, here; a job only changes a
default where its own run differs."""

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sae_lens_jumprelu.config import JumpReLUSTETrainingSAEConfig
from sae_lens_jumprelu.data.corpus import check_dataset
from sae_lens_jumprelu.data.models import check_device
from sae_lens_jumprelu.recipes import Recipe, get_recipe

# Config fields each job sets itself (from the site, --d-sae, --device, the sparsity flags).
_SET_BY_THE_JOB = {
    "d_in",
    "d_sae",
    "device",
    "reshape_activations",
    "target_l0",
    "l0_coefficient",
    "metadata",
}


@dataclass(frozen=True)
class LanguageModelRun:
    """Options shared by the jobs that train SAEs on a language model's activations; the
    defaults are the embedded run."""

    model: str | None = None
    """TransformerLens model name; None: the embedded Gemma 3 270M."""
    dataset: str | None = None
    """HF dataset name or local text/JSONL/parquet file or directory; None: the embedded corpus."""
    context_size: int = 128
    """Tokens per context (BOS first)."""
    tokens: int = 200_000
    """Training tokens per SAE (with ``activations``: a cache holding fewer is read again,
    reshuffled, until they are reached)."""
    eval_tokens: int = 4096
    """Held-out tokens for L0, FVU and delta LM loss (documents never trained on; with
    ``activations``, the first of the cache's held-out contexts; ``collect``: stored)."""
    d_sae: int = 2048
    """Latents per SAE."""
    # Short LM runs need more, smaller steps than the recipes' 4096 (embedded model, layer 6,
    # 250k tokens, d_sae 4096, target 32, held-out L0 / FVU / dead, 2026-12-02, before the
    # threshold ceiling): batch 1024 18.8 / 0.125 / 67%; with the ceiling and the signed
    # controller, batch 1024 missed target 16 (20.6) where batch 256 reached it (16.0).
    batch_size: int | None = 256
    """Activations per training step, for every SAE; None: the recipe's."""
    lr: float | None = None
    """Learning rate of every SAE; None: the recipe's."""
    out: Path = Path("sae-jumprelu-run")
    """Output directory."""
    exclude_special_tokens: bool = True
    """Drop BOS/EOS/pad activations from training and metrics, as the paper does."""
    activations: Path | None = None
    """Train from this activation cache (``collect``'s output) instead of running the model."""
    recipe: str = "short_budget"
    """Named recipe of our JumpReLU SAEs (``paper``, ``short_budget``); the built-in
    architectures of a sweep keep SAELens's defaults."""
    sae_config: dict[str, Any] = field(default_factory=dict)
    """``JumpReLUSTETrainingSAEConfig`` fields of our SAEs over the recipe's, e.g.
    ``{"jumprelu_kernel": "triangle"}`` (CLI: ``--sae-config jumprelu_kernel=triangle``)."""
    device: str = "cpu"
    """Torch device of the model and the SAEs (cpu, cuda, cuda:1, mps)."""
    dtype: str = "float32"
    """Dtype of the language model (SAEs train in float32)."""
    seed: int = 0
    """Seed of every SAE's initialisation and of the activations' shuffling."""
    overwrite: bool = False
    """Replace an existing output directory once the new one is complete; without it an
    existing one is refused before any model loads."""

    def __post_init__(self) -> None:
        for name in ("context_size", "tokens", "eval_tokens", "d_sae", "batch_size"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.lr is not None and not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        check_device(self.device)
        check_dataset(self.dataset)
        known = {f.name for f in fields(JumpReLUSTETrainingSAEConfig)}
        for name in self.sae_config:
            if name in _SET_BY_THE_JOB:
                raise ValueError(
                    f"sae_config {name!r} is set by the job itself: use its own option "
                    "(--site, --d-sae, --device, --target-l0, --l0-coefficient) instead"
                )
            if name not in known:
                raise ValueError(
                    f"sae_config {name!r} is not a JumpReLUSTETrainingSAEConfig field; "
                    f"known fields: {', '.join(sorted(known - _SET_BY_THE_JOB))}"
                )
        try:  # an unknown recipe or a bad value fails here, before the model loads
            self.our_recipe().sae_config(8, 8)
        except TypeError as error:
            raise ValueError(f"sae_config {self.sae_config}: {error}") from error

    def our_recipe(self) -> Recipe:
        """The named recipe with ``sae_config`` over its SAE fields."""
        recipe = get_recipe(self.recipe)
        return replace(recipe, sae={**recipe.sae, **self.sae_config})

    def recipe_settings(self) -> Recipe:
        """Our recipe (``sae_config`` included) with this job's batch size and learning rate,
        each the recipe's where None."""
        recipe = self.our_recipe()
        return replace(
            recipe,
            batch_size=self.batch_size or recipe.batch_size,
            lr=self.lr if self.lr is not None else recipe.lr,
        )

    def record(self) -> dict[str, Any]:
        """The job as ``run.json`` stores it."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
