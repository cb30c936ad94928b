"""The `analysis` section: how a sweep's differences are tested and what power is asked of it.
A leaf like the stages' sections: `mixray.config` composes it, `mixray.science.analysis` uses it.

Nothing here changes what a sweep computes (no artifact is keyed by it): only how the summary,
the parent run's metrics and the report judge the results.
"""

from __future__ import annotations

from pydantic import Field

from mixray.schema import Strict


class AnalysisConfig(Strict):
    """Paired comparisons (a bootstrap over problems, and over seeds where a point has several)
    and the power statement of the dry run, the summary and the report."""

    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level (two-sided).")
    power: float = Field(0.8, gt=0, lt=1, description="Power the detectable difference is at.")
    detect: float = Field(
        0.05, gt=0, lt=1, description="A difference in accuracy the researcher wants to be able "
        "to detect: the plan and report say how many held-out problems that takes.")
    resamples: int = Field(2000, ge=100, description="Bootstrap replicates per comparison.")
    seed: int = Field(0, description="Seeds the bootstrap: the same records give the same "
                      "intervals.")

    @property
    def level(self) -> float:
        """The confidence level of the intervals: 1 - alpha."""
        return 1.0 - self.alpha
