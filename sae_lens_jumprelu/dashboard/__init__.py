"""A static feature dashboard: ``build_dashboard`` or ``sae-jumprelu dashboard SAE --out DIR``."""

from sae_lens_jumprelu.dashboard.build import (
    Dashboard,
    DashboardConfig,
    build_dashboard,
    choose_features,
)

__all__ = ["Dashboard", "DashboardConfig", "build_dashboard", "choose_features"]
