"""Statistics over seeds, and the chapter's "clear separation" verdict.

Two families, both from scipy.stats (nothing here draws resamples of its own):

- The chapter's table: mean, sample standard deviation and the 95% confidence interval
  half-width with Student's t and n-1 degrees of freedom, ``t_{0.975, n-1} * s / sqrt(n)``
  (:func:`summarize`; one seed has no interval, ``None``).
- What the evaluation literature asks for when there are few runs (Agarwal et al. 2021, "Deep RL
  at the Edge of the Statistical Precipice"; Colas et al. 2018, "How Many Random Seeds?"): the
  interquartile mean (IQM) with a percentile-bootstrap 95% interval over seeds; a Wilson 95%
  interval for the success of all evaluated episodes pooled; one-sided tests of HER > no-HER
  (Welch's t over seeds, Mann-Whitney U over seeds, Fisher's exact test over pooled episodes);
  the probability of improvement with its bootstrap interval.

scipy rather than rliable: rliable's estimators are these same scipy calls (``trim_mean`` for
the IQM, percentile bootstrap), and it would pull arch, seaborn and pandas into the harness.
The IQM of 3 seeds trims nothing (``trim_mean`` cuts ``int(0.25 * n)`` values at each end), so
it equals the mean; from 4 seeds on it drops the extremes. A bootstrap over 3 seeds can only
resample those 3 values: its interval says how far they spread, not where a 4th seed would land.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from collections.abc import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
# A fixed generator: the same values always give the same interval (and the same report).
BOOTSTRAP_SEED = 0
# The chapter's criterion ("Interpreting Results"): HER above no-HER by more than 50 points
# (ideally 70), significantly, and on every seed.
SEPARATION_POINTS = 50.0
IDEAL_SEPARATION_POINTS = 70.0
SIGNIFICANCE = 0.05
EXACT_RANK_TEST_MAX_SEEDS = 20


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


def iqm(values, axis: int = -1):
    """Interquartile mean: the mean of the middle half (25% trimmed from each end)."""
    return stats.trim_mean(values, 0.25, axis=axis)


def bootstrap_interval(
    samples: Sequence[Sequence[float]], statistic, n_resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float] | None:
    """Percentile-bootstrap 95% interval of ``statistic(*samples, axis=-1)``, resampling each sample
    independently (seeds are independent runs). None when a sample has fewer than 2 values."""
    arrays = tuple(np.asarray(s, dtype=float) for s in samples)
    if any(len(a) < 2 for a in arrays):
        return None
    # Percentile, not BCa: BCa's jackknife is undefined when every seed scored the same.
    result = stats.bootstrap(
        arrays,
        statistic,
        vectorized=True,
        paired=False,
        method="percentile",
        confidence_level=CONFIDENCE,
        n_resamples=n_resamples,
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    low, high = result.confidence_interval
    return float(low), float(high)


def iqm_interval(values: Sequence[float], n_resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float] | None:
    return bootstrap_interval([values], iqm, n_resamples)


def wilson_interval(successes: int, trials: int) -> tuple[float, float]:
    """Wilson score 95% interval for a success probability from ``successes`` of ``trials`` episodes."""
    ci = stats.binomtest(successes, trials).proportion_ci(CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def probability_of_improvement(x, y, axis: int = -1):
    """P(X > Y) + P(X = Y) / 2 for a run X of one condition and a run Y of the other, over all
    pairs of seeds (Agarwal et al. 2021; the Mann-Whitney U statistic divided by n_x * n_y)."""
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)[..., :, None]
    y = np.moveaxis(np.asarray(y, dtype=float), axis, -1)[..., None, :]
    return ((x > y) + 0.5 * (x == y)).mean(axis=(-2, -1))


def welch_p_value(better: Sequence[float], worse: Sequence[float]) -> float | None:
    """One-sided Welch's t-test that ``better`` has the higher mean. None where it is undefined:
    fewer than 2 seeds in a condition, or no spread at all in either (t would divide by zero)."""
    if len(better) < 2 or len(worse) < 2 or (np.ptp(better) == 0 and np.ptp(worse) == 0):
        return None
    with warnings.catch_warnings():
        # One condition with no spread (every HER seed at 100%) is fine for Welch's t; scipy warns
        # about its moment "precision loss" all the same.
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(better, worse, equal_var=False, alternative="greater").pvalue)


def mann_whitney_p_value(better: Sequence[float], worse: Sequence[float]) -> float:
    """One-sided Mann-Whitney U test that ``better`` tends to be higher, exact for the few seeds RL
    runs (ties included; the normal approximation would understate p). With 3 vs 3 seeds its
    smallest possible p-value is 1/20 = 0.05: it cannot call 3 seeds significant."""
    method = "exact" if max(len(better), len(worse)) <= EXACT_RANK_TEST_MAX_SEEDS else "asymptotic"
    return float(stats.mannwhitneyu(better, worse, alternative="greater", method=method).pvalue)


def fisher_p_value(better_successes: int, better_trials: int, worse_successes: int, worse_trials: int) -> float:
    """One-sided Fisher's exact test over pooled episodes: is ``better``'s success rate higher?"""
    table = [[better_successes, better_trials - better_successes], [worse_successes, worse_trials - worse_successes]]
    return float(stats.fisher_exact(table, alternative="greater").pvalue)


@dataclass(frozen=True)
class Separation:
    """The chapter's "clear separation" verdict, criterion by criterion."""

    difference_points: float  # mean HER success - mean no-HER success, in percentage points
    p_value: float  # one-sided, HER > no-HER
    test: str  # which test gave p_value
    her_min: float
    no_her_max: float

    @property
    def large(self) -> bool:
        return self.difference_points > SEPARATION_POINTS

    @property
    def ideal(self) -> bool:
        return self.difference_points > IDEAL_SEPARATION_POINTS

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE

    @property
    def consistent(self) -> bool:
        """Every HER seed above every no-HER seed."""
        return self.her_min > self.no_her_max

    @property
    def clear(self) -> bool:
        return self.large and self.significant and self.consistent

    def criteria(self) -> list[tuple[str, str, bool]]:
        """(criterion, its value, met) in the order the chapter names them."""
        return [
            (f"difference > {SEPARATION_POINTS:.0f} points", f"{self.difference_points:+.1f} points", self.large),
            (f"significant (p < {SIGNIFICANCE})", f"p = {self.p_value:.2g} ({self.test})", self.significant),
            (
                "consistent (every HER seed above every no-HER seed)",
                f"lowest HER {100 * self.her_min:.1f}% vs highest no-HER {100 * self.no_her_max:.1f}%",
                self.consistent,
            ),
        ]

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "large": self.large,
            "ideal": self.ideal,
            "significant": self.significant,
            "consistent": self.consistent,
            "clear_separation": self.clear,
        }


def separation(
    her: Sequence[float], no_her: Sequence[float], her_episodes: Sequence[int], no_her_episodes: Sequence[int]
) -> Separation:
    """The verdict from per-seed success rates and the number of episodes each seed was scored on.

    Significance is Welch's t over seeds (seeds are the independent units); where it is undefined
    (one seed, or every seed of both conditions scored the same) Fisher's exact test over the
    pooled episodes takes its place, and ``test`` says so.
    """
    p_value, test = welch_p_value(her, no_her), "Welch's t over seeds, one-sided"
    if p_value is None:
        p_value = fisher_p_value(
            pooled_successes(her, her_episodes),
            sum(her_episodes),
            pooled_successes(no_her, no_her_episodes),
            sum(no_her_episodes),
        )
        test = "Fisher's exact over pooled episodes, one-sided"
    return Separation(
        difference_points=100 * (float(np.mean(her)) - float(np.mean(no_her))),
        p_value=p_value,
        test=test,
        her_min=float(min(her)),
        no_her_max=float(max(no_her)),
    )


def pooled_successes(rates: Sequence[float], episodes: Sequence[int]) -> int:
    """Successful episodes over all seeds, from each seed's success rate and episode count."""
    return int(sum(round(rate * n) for rate, n in zip(rates, episodes, strict=True)))
