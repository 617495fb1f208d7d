"""Circuit-analysis helpers over SAELens's ``HookedSAETransformer``.

Attach SAEs (trained here, converted or Gemma Scope) with or without the error term, attribute
a metric to features, ablate or steer features while running or generating, and gather each
feature's top-activating examples over a dataset in bounded memory.
"""

from sae_lens_jumprelu.analysis.attribution import (
    Attribution,
    SiteAttribution,
    attribute,
    logit_difference,
)
from sae_lens_jumprelu.analysis.feature_stats import FeatureStats, collect_feature_stats
from sae_lens_jumprelu.analysis.hooked import (
    attached,
    check_features,
    check_saes,
    hooked_sae_transformer,
    load_sae,
    to_tokens,
)
from sae_lens_jumprelu.analysis.interventions import (
    FeatureEdit,
    generate_with_edits,
    run_with_edits,
)
from sae_lens_jumprelu.analysis.logit_effects import LogitEffects, logit_effects

__all__ = [
    "Attribution",
    "FeatureEdit",
    "FeatureStats",
    "LogitEffects",
    "SiteAttribution",
    "attached",
    "attribute",
    "check_features",
    "check_saes",
    "collect_feature_stats",
    "generate_with_edits",
    "hooked_sae_transformer",
    "load_sae",
    "logit_difference",
    "logit_effects",
    "run_with_edits",
    "to_tokens",
]
