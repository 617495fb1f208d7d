"""What ``train`` and ``sweep`` are both told: the model, its text, and how SAEs are trained."""

from dataclasses import dataclass, field, fields, replace
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
    dtype: str = "float32"
    """Dtype of the language model (SAEs train in float32)."""
    seed: int = 0
    """Seed of every SAE's initialisation and of the activations' shuffling."""
    overwrite: bool = False
    """Replace an existing output directory once the new one is complete; without it an
    existing one is refused before any model loads."""

    def __post_init__(self) -> None:
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
