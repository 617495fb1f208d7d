"""Where activations come from: models, text, hook sites, streams, caches, synthetic data."""
