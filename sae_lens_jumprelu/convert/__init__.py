"""Exact weight conversion between JumpReLU, Gated, Gemma Scope, dictionary_learning and SAELens.

One module per foreign format; every conversion goes through ``JumpReLUWeights`` (or
``GatedWeights``), is checked by ``verify`` on SAELens's own classes, and is written atomically.
"""

from sae_lens_jumprelu.atomic import OutputExistsError
from sae_lens_jumprelu.convert.api import (
    TARGETS,
    ConversionResult,
    convert,
    convert_weights,
    detect_format,
    load,
)
from sae_lens_jumprelu.convert.gated import (
    InexactConversionError,
    Inexactness,
    gated_to_jumprelu,
    gated_with_b_dec_applied,
    jumprelu_to_gated,
)
from sae_lens_jumprelu.convert.verify import Verification, verify
from sae_lens_jumprelu.convert.weights import ConversionError, GatedWeights, JumpReLUWeights

__all__ = [
    "TARGETS",
    "ConversionError",
    "ConversionResult",
    "GatedWeights",
    "InexactConversionError",
    "Inexactness",
    "JumpReLUWeights",
    "OutputExistsError",
    "Verification",
    "convert",
    "convert_weights",
    "detect_format",
    "gated_to_jumprelu",
    "gated_with_b_dec_applied",
    "jumprelu_to_gated",
    "load",
    "verify",
]
