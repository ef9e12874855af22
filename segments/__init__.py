"""purchase-segments domain core: pure, deterministic, no I/O."""
