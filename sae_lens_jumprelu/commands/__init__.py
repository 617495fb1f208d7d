"""The ``sae-jumprelu`` subcommands, each over the shared run pipeline."""
