"""Runtime backends, one module per format; each registers itself on import and imports its runtime lazily."""
