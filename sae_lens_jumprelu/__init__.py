"""JumpReLU sparse autoencoders trained with straight-through estimators, as a SAELens plugin.

Importing the package registers the "jumprelu_ste" training architecture with SAELens.
"""

from sae_lens_jumprelu.batch_checks import NonFiniteActivationsError
from sae_lens_jumprelu.config import JumpReLUSTETrainingSAEConfig
from sae_lens_jumprelu.registration import register
from sae_lens_jumprelu.ste import heaviside, jumprelu
from sae_lens_jumprelu.training_sae import JumpReLUSTETrainingSAE

register()

__all__ = [
    "JumpReLUSTETrainingSAE",
    "JumpReLUSTETrainingSAEConfig",
    "NonFiniteActivationsError",
    "heaviside",
    "jumprelu",
    "register",
]
__version__ = "0.1.0"
