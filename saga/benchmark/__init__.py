"""The built-in benchmark: `saga synth` cuts real clips and adds per-generator marks (not phase 1 or 2)."""
