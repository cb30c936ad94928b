"""What a sweep's trials reserve, and so how many Tune runs at once.

A trial itself reserves almost nothing (`TRIAL_CPU`); its TorchTrainer asks for the workers'
CPUs and GPUs on its own, which Tune does not count (Ray Train V2). Concurrency is therefore
derived from the declared resources (`max_concurrent_trials`), so trials never wait on each other.
"""

from __future__ import annotations

import math

from mixray.config import SweepConfig

# What a Tune trial itself reserves: its TorchTrainer asks for the workers' CPUs on its own.
TRIAL_CPU = 0.01


def cpus_per_trial(cfg: SweepConfig) -> float:
    return TRIAL_CPU + cfg.train.num_workers * cfg.resources.cpus_per_train_worker


def gpus_per_trial(cfg: SweepConfig) -> float:
    return cfg.train.num_workers * cfg.resources.gpus_per_train_worker


def max_concurrent_trials(cfg: SweepConfig, cluster_cpus: float,
                          cluster_gpus: float = 0.0) -> int:
    """As many trials as the declared resources fit, so trials never wait on each other."""
    fit = max(1, math.floor(cluster_cpus / cpus_per_trial(cfg) + 1e-9))
    if gpus_per_trial(cfg) > 0:
        fit = max(1, min(fit, math.floor(cluster_gpus / gpus_per_trial(cfg) + 1e-9)))
    return min(fit, cfg.search.max_concurrent_trials or fit, cfg.n_trials())
