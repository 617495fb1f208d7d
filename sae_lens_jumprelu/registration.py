"""Registration of the "jumprelu_ste" training architecture in SAELens's registry.

SAELens refuses a second registration of a name and already owns "jumprelu" (inference and
training), so the trainer is registered as "jumprelu_ste" and saves as plain "jumprelu".
"""

from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class

from sae_lens_jumprelu.config import ARCHITECTURE, JumpReLUSTETrainingSAEConfig
from sae_lens_jumprelu.training_sae import JumpReLUSTETrainingSAE


def register() -> None:
    """Register "jumprelu_ste"; idempotent, and a reload of this package replaces its own entry."""
    existing = SAE_TRAINING_CLASS_REGISTRY.get(ARCHITECTURE)
    if existing is None:
        register_sae_training_class(
            ARCHITECTURE, JumpReLUSTETrainingSAE, JumpReLUSTETrainingSAEConfig
        )
        return
    if not existing[0].__module__.startswith("sae_lens_jumprelu"):
        raise RuntimeError(
            f"SAELens architecture {ARCHITECTURE!r} is already registered by "
            f"{existing[0].__module__}.{existing[0].__qualname__}; uninstall the conflicting plugin"
        )
    # Same package, possibly reloaded: point the registry at the current classes.
    SAE_TRAINING_CLASS_REGISTRY[ARCHITECTURE] = (
        JumpReLUSTETrainingSAE,
        JumpReLUSTETrainingSAEConfig,
    )
