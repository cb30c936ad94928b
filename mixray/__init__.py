"""mixray: Mix Distillation sweeps on Ray (docs/LAYOUT.md is the map of the code)."""
