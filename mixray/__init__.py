"""mixray: Mix Distillation sweeps on Ray (see ../shared/DESIGN.md for the map)."""
