"""Statistics over seeds: mean, sample standard deviation and the 95% confidence interval.

The interval half-width uses Student's t with n-1 degrees of freedom,
``t_{0.975, n-1} * s / sqrt(n)``, the right choice for the 3-5 seeds RL papers run.
With one seed there is no interval (``None``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    ci95: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci95": self.ci95}


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample std (ddof=1) and 95% CI half-width of ``values`` (one per seed)."""
    n = len(values)
    if n == 0:
        raise ValueError("summarize needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return Summary(n=1, mean=mean, std=0.0, ci95=None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half_width = float(stats.t.ppf(0.975, df=n - 1)) * std / math.sqrt(n)
    return Summary(n=n, mean=mean, std=std, ci95=half_width)
