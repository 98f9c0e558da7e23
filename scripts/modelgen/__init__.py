"""Model generation for the ML Bridge model repository (run through `scripts/models` and `scripts/bench models`)."""
