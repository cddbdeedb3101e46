import math

import numpy as np
import pytest
from scipy import stats

from harness.statistics import summarize


@pytest.mark.parametrize("values", [[0.9, 1.0, 0.95], [0.0, 0.0, 0.1, 0.2], [-47.5, -41.25], [0.019, 0.017, 0.02, 0.03, 0.01]])
def test_ci_matches_scipy_t_interval(values):
    summary = summarize(values)
    low, high = stats.t.interval(0.95, df=len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert summary.mean == pytest.approx(np.mean(values))
    assert summary.std == pytest.approx(np.std(values, ddof=1))
    assert summary.ci95 == pytest.approx((high - low) / 2)


def test_three_seeds_use_t_with_two_degrees_of_freedom():
    # t_{0.975, 2} = 4.3027: with 3 seeds the half-width is 4.3027 * s / sqrt(3), not 1.96 * s / sqrt(3).
    summary = summarize([0.8, 1.0, 0.9])
    assert summary.ci95 == pytest.approx(4.302652729911275 * 0.1 / math.sqrt(3))


def test_identical_seeds_have_zero_width_and_one_seed_has_none():
    assert summarize([1.0, 1.0, 1.0]).ci95 == 0.0
    single = summarize([0.25])
    assert (single.n, single.mean, single.ci95) == (1, 0.25, None)
    with pytest.raises(ValueError):
        summarize([])


# ---------------------------------------------------------------- beyond the chapter's table

from harness import statistics as st  # noqa: E402 - imported where the tests that use it begin


def test_iqm_is_the_mean_of_the_middle_half():
    # Hand-checked: of 1..8 the middle half is 3, 4, 5, 6, mean 4.5; of 3 seeds nothing is trimmed.
    assert st.iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)
    assert st.iqm([0.9, 1.0, 0.5]) == pytest.approx(0.8)
    assert st.iqm([0.0, 0.1, 0.2, 0.3, 1.0]) == pytest.approx(0.2)  # 5 values: one trimmed at each end


def test_bootstrap_interval_is_scipy_percentile_bootstrap_and_reproducible():
    values = [0.95, 0.98, 1.0, 0.91]
    reference = stats.bootstrap(
        (np.array(values),),
        lambda x, axis: stats.trim_mean(x, 0.25, axis=axis),
        method="percentile",
        n_resamples=10_000,
        rng=np.random.default_rng(0),
    )
    low, high = st.iqm_interval(values)
    assert (low, high) == pytest.approx((reference.confidence_interval.low, reference.confidence_interval.high))
    assert st.iqm_interval(values) == (low, high)
    assert min(values) <= low <= st.iqm(values) <= high <= max(values)
    assert st.iqm_interval([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert st.iqm_interval([0.5]) is None


def test_wilson_interval_matches_the_formula():
    # Hand-checked Wilson score interval for 15 of 300: (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n).
    k, n, z = 15, 300, stats.norm.ppf(0.975)
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert st.wilson_interval(k, n) == pytest.approx((center - half, center + half))
    assert st.wilson_interval(15, 300) == pytest.approx((0.0305, 0.0808), abs=1e-4)
    low, high = st.wilson_interval(300, 300)
    assert high == pytest.approx(1.0) and low < 1.0  # all 300 succeeded: still an interval below 100%


def test_probability_of_improvement_counts_pairs_and_ties_half():
    assert st.probability_of_improvement([0.9, 1.0, 0.95], [0.05, 0.1, 0.0]) == 1.0
    # Pairs (x > y): 0.5>0.4, 0.5<0.6, 0.7>0.4, 0.7>0.6 -> 3 of 4; with a tie counted half.
    assert st.probability_of_improvement([0.5, 0.7], [0.4, 0.6]) == pytest.approx(0.75)
    assert st.probability_of_improvement([0.5], [0.5]) == pytest.approx(0.5)
    u = stats.mannwhitneyu([0.2, 0.5, 0.7], [0.4, 0.6, 0.1]).statistic
    assert st.probability_of_improvement([0.2, 0.5, 0.7], [0.4, 0.6, 0.1]) == pytest.approx(u / 9)


def test_tests_agree_with_scipy_and_are_one_sided():
    her, no_her = [0.95, 0.98, 1.0], [0.05, 0.07, 0.03]
    assert st.welch_p_value(her, no_her) == pytest.approx(
        stats.ttest_ind(her, no_her, equal_var=False, alternative="greater").pvalue
    )
    assert st.welch_p_value(no_her, her) > 0.99  # one-sided: the wrong direction is not significant
    assert st.mann_whitney_p_value(her, no_her) == pytest.approx(0.05)  # 3 vs 3, no ties: 1/20 at best
    assert st.welch_p_value([1.0, 1.0, 1.0], [0.05, 0.05, 0.05]) is None  # no spread: t divides by zero
    assert st.welch_p_value([1.0], [0.0, 0.1]) is None
    assert st.fisher_p_value(290, 300, 15, 300) == pytest.approx(
        stats.fisher_exact([[290, 10], [15, 285]], alternative="greater").pvalue
    )


def test_verdict_clear_separation():
    verdict = st.separation([0.98, 0.95, 0.95], [0.05, 0.05, 0.06], [100] * 3, [100] * 3)
    assert verdict.clear and verdict.large and verdict.ideal and verdict.significant and verdict.consistent
    assert verdict.difference_points == pytest.approx(90.666, abs=1e-2)
    assert verdict.test.startswith("Welch")


def test_verdict_not_significant_when_seeds_disagree_too_much():
    # +56 points on average, but HER's seeds spread from 10% to 100%: Welch's p is about 0.07.
    verdict = st.separation([1.0, 0.95, 0.10], [0.05, 0.04, 0.08], [100] * 3, [100] * 3)
    assert verdict.large and not verdict.significant and not verdict.clear
    assert verdict.p_value == pytest.approx(
        stats.ttest_ind([1.0, 0.95, 0.10], [0.05, 0.04, 0.08], equal_var=False, alternative="greater").pvalue
    )


def test_verdict_inconsistent_seed():
    # One HER seed at 30% sits below a no-HER seed at 40%: not consistent, whatever the mean says.
    verdict = st.separation([1.0, 1.0, 1.0, 0.3, 1.0], [0.05, 0.05, 0.4, 0.05, 0.05], [100] * 5, [100] * 5)
    assert verdict.large and not verdict.consistent and not verdict.clear


def test_verdict_small_difference_and_fallback_test():
    verdict = st.separation([0.3, 0.3, 0.3], [0.05, 0.05, 0.05], [100] * 3, [100] * 3)
    assert not verdict.large and verdict.consistent and not verdict.clear
    # No spread in either condition: Fisher's exact test over the 300 + 300 pooled episodes.
    assert verdict.test.startswith("Fisher")
    assert verdict.p_value == pytest.approx(st.fisher_p_value(90, 300, 15, 300))


def fake_run(success: float, episodes: int = 100, steps_to_90: int | None = None):
    from types import SimpleNamespace

    metrics = {"eval/success_rate": success, "eval/n_episodes": float(episodes)}
    if steps_to_90 is not None:
        metrics.update(
            {
                "eval/steps_to_50": steps_to_90 / 2,
                "eval/steps_to_90": steps_to_90,
                "eval/minutes_to_90": 1.5,
                "eval/minutes_to_50": 0.75,
            }
        )
    return SimpleNamespace(
        data=SimpleNamespace(metrics=metrics, tags={}),
        info=SimpleNamespace(run_id=f"run{success}", end_time=None, start_time=0),
    )


def test_compare_warns_when_no_her_learns_sparse_push():
    from harness.comparison import seed_statistics

    floor = {"success_rate": 0.07, "n_episodes": 100, "run_id": "floor"}
    found = {False: [fake_run(0.25), fake_run(0.05), fake_run(0.06)], True: [fake_run(1.0, steps_to_90=300_000)] * 3}
    statistics, _verdict = seed_statistics("FetchPush-v4", [0, 1, 2], found, floor)
    (warning,) = statistics["warnings"]
    assert "no-HER reached 12.0% on sparse FetchPush-v4" in warning and "floor is 7.0%" in warning
    assert statistics["conditions"]["her"]["to_90"]["steps_iqm"] == 300_000
    assert statistics["conditions"]["no_her"]["to_90"]["steps"] == [None, None, None]
    assert statistics["conditions"]["her"]["pooled_successes"] == 300
    # Reach is not one of the tasks where no-HER must stay at the floor.
    assert seed_statistics("FetchReach-v4", [0, 1, 2], found, floor)[0]["warnings"] == []
    found[False] = [fake_run(0.05)] * 3
    assert seed_statistics("FetchPush-v4", [0, 1, 2], found, floor)[0]["warnings"] == []


def test_rank_test_is_exact_with_ties():
    # Every HER seed at 100%: the exact test's p is 1/20, which the normal approximation understates (0.032).
    assert st.mann_whitney_p_value([1.0, 1.0, 1.0], [0.12, 0.14, 0.0]) == pytest.approx(0.05)


def test_first_reached_without_logged_thresholds_reads_the_latest_evaluation_at_each_step(store):
    """A run of an older harness (no eval/steps_to_*) that was resumed: the evaluations of the abandoned
    steps after its checkpoint were redone, and only the redone ones count; the final eval does not."""
    import mlflow

    from harness.comparison import first_reached

    with mlflow.start_run() as active:
        run_id, start = active.info.run_id, active.info.start_time
        client = mlflow.MlflowClient()
        for step, value, at in [(1000, 0.2, 1), (2000, 0.95, 2), (2000, 0.4, 5), (3000, 0.9, 6), (4000, 1.0, 7)]:
            client.log_metric(run_id, "eval/success_rate", value, timestamp=start + at * 60_000, step=step)
    client.set_terminated(run_id, end_time=start + 8 * 60_000)
    client.log_metric(run_id, "eval/success_rate", 1.0, timestamp=start + 9 * 60_000, step=1000)  # harness eval
    run = client.get_run(run_id)
    assert first_reached(run, 0.9) == (3000, 6.0)
    assert first_reached(run, 0.3) == (2000, 5.0)
    assert first_reached(run, 1.0) == (4000, 7.0)
