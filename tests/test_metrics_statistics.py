"""camkit_plugins.metrics.statistics against oracles: bootstrap by a numpy loop, scipy.stats.wilcoxon and
scipy.stats.friedmanchisquare, Holm and Kendall's W and the rank-biserial correlation by hand."""

import itertools

import numpy as np
import pytest
from scipy import stats

from camkit_plugins.metrics import statistics as st


def loop_bootstrap_means(values, resamples, seed):
    rng = np.random.default_rng(seed)
    return np.array([values[rng.integers(0, len(values), size=len(values))].mean() for _ in range(resamples)])


def test_percentile_interval_equals_a_numpy_loop_and_leaves_nan_out():
    rng = np.random.default_rng(3)
    values = rng.normal(0.4, 0.2, size=37)
    with_nan = np.concatenate([values[:20], [np.nan, np.inf], values[20:]])
    interval = st.bootstrap_interval(with_nan, resamples=700, confidence=0.9, seed=11)
    means = loop_bootstrap_means(values, 700, 11)
    assert interval.mean == pytest.approx(values.mean(), abs=1e-12)
    assert (interval.low, interval.high) == pytest.approx(tuple(np.quantile(means, [0.05, 0.95])), abs=1e-12)
    assert (interval.count, interval.nan) == (37, 2)
    again = st.bootstrap_interval(with_nan, resamples=700, confidence=0.9, seed=11)
    assert again == interval  # seeded
    assert st.bootstrap_interval(values, resamples=700, seed=12).low != interval.low


def test_bca_interval_follows_efron_by_hand_and_agrees_with_scipy():
    rng = np.random.default_rng(5)
    values = rng.exponential(1.0, size=40)  # skewed: BCa moves the levels
    interval = st.bootstrap_interval(values, resamples=2000, method="bca", seed=2)
    means = loop_bootstrap_means(values, 2000, 2)
    theta = values.mean()
    z0 = stats.norm.ppf(np.mean(means < theta))
    jack = np.array([np.delete(values, i).mean() for i in range(len(values))])
    d = jack.mean() - jack
    a = (d ** 3).sum() / (6 * ((d ** 2).sum()) ** 1.5)
    levels = [stats.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))) for z in stats.norm.ppf([0.025, 0.975])]
    assert (interval.low, interval.high) == pytest.approx(tuple(np.quantile(means, levels)), abs=1e-12)
    reference = stats.bootstrap((values,), np.mean, n_resamples=2000, method="BCa", random_state=0)
    width = interval.high - interval.low
    assert interval.low == pytest.approx(reference.confidence_interval.low, abs=0.1 * width)
    assert interval.high == pytest.approx(reference.confidence_interval.high, abs=0.1 * width)


def test_degenerate_intervals_and_bad_settings():
    assert np.isnan(st.bootstrap_interval([1.0]).low) and st.bootstrap_interval([1.0]).count == 1
    assert np.isnan(st.bootstrap_interval([np.nan, np.nan]).mean)
    constant = st.bootstrap_interval([2.0, 2.0, 2.0])
    assert (constant.low, constant.high) == (2.0, 2.0)
    with pytest.raises(ValueError, match="percentile, bca"):
        st.bootstrap_interval([1.0, 2.0], method="student")
    with pytest.raises(ValueError, match="confidence"):
        st.bootstrap_interval([1.0, 2.0], confidence=95)


def test_holm_by_hand():
    adjusted = st.holm([0.01, 0.04, 0.03, 0.005, np.nan])
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])


def rank_biserial_by_hand(d):
    d = [x for x in d if x != 0]
    ranks = stats.rankdata(np.abs(d))
    plus = sum(r for r, x in zip(ranks, d) if x > 0)
    minus = sum(r for r, x in zip(ranks, d) if x < 0)
    return (plus - minus) / (plus + minus)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_paired_tests_equal_scipy_wilcoxon_with_holm_and_rank_biserial(higher_is_better):
    rng = np.random.default_rng(0)
    base = rng.normal(size=30)
    # d equals c up to float noise of consistent sign: a tie, not a "significant" difference
    table = np.stack([base + 0.8 + rng.normal(0, 0.3, 30), base + rng.normal(0, 0.3, 30), base.copy(),
                      base * (1 + 3e-8)])
    table[1, [3, 7]] = np.nan  # left out of the pairs that involve method b
    methods = ["a", "b", "c", "d"]
    tests = st.paired_tests(methods, table, higher_is_better=higher_is_better, alpha=0.05)
    assert [(t.a, t.b) for t in tests] == list(itertools.combinations(methods, 2))
    raw = []
    for t, (i, j) in zip(tests, itertools.combinations(range(4), 2)):
        both = np.isfinite(table[i]) & np.isfinite(table[j])
        d = np.where(np.abs(table[i, both] - table[j, both]) < 1e-6, 0.0, table[i, both] - table[j, both])
        assert t.n == both.sum()
        if (i, j) == (2, 3):  # identical methods: nothing to test, p = 1, no effect
            assert (t.p, t.effect, t.verdict) == (1.0, 0.0, "n.s.")
        else:
            assert t.p == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
            expected = rank_biserial_by_hand(d if higher_is_better else -d)
            assert t.effect == pytest.approx(expected, abs=1e-12)
        raw.append(t.p)
    m = len(raw)
    order = np.argsort(raw)
    by_hand = np.empty(m)
    running = 0.0
    for k, index in enumerate(order):
        running = max(running, min(1.0, (m - k) * raw[index]))
        by_hand[index] = running
    assert [t.p_holm for t in tests] == pytest.approx(list(by_hand))
    a_vs_b = tests[0]
    assert a_vs_b.verdict == ("a better" if higher_is_better else "b better")


def test_align_by_sample_ids():
    methods, ids, table = st.align({"x": ([3, 1, 2], [30.0, 10.0, 20.0]), "y": ([2, 4], [2.0, 4.0])})
    assert methods == ["x", "y"] and ids == [1, 2, 3, 4]
    np.testing.assert_array_equal(table, [[10, 20, 30, np.nan], [np.nan, 2, np.nan, 4]])
    with pytest.raises(ValueError, match="twice"):
        st.align({"x": ([1, 1], [0.0, 1.0])})


def kendalls_w_by_hand(ranks):
    m, n = len(ranks), len(ranks[0])
    totals = [sum(ranks[j][i] for j in range(m)) for i in range(n)]
    s = sum((t - m * (n + 1) / 2) ** 2 for t in totals)
    ties = 0
    for row in ranks:
        for value in set(row):
            t = list(row).count(value)
            ties += t ** 3 - t
    return 12 * s / (m ** 2 * (n ** 3 - n) - m * ties)


def test_kendalls_w_by_hand_and_against_friedman():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=(6, 5)), 1)  # rounding makes ties
    scores[2, 1] = scores[2, 3]
    ranks = st.rank_rows(scores, higher_is_better=True)
    assert np.all(ranks[:, 0] == stats.rankdata(-scores, axis=1)[:, 0])
    w = st.kendalls_w(ranks)
    assert w == pytest.approx(kendalls_w_by_hand(ranks.tolist()), rel=1e-12)
    chi2 = stats.friedmanchisquare(*(-scores).T).statistic  # columns = items, rows = raters
    assert w == pytest.approx(chi2 / (6 * (5 - 1)), rel=1e-9)
    assert st.kendalls_w(np.tile([1, 2, 3], (4, 1))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two items"):
        st.kendalls_w([[1], [1]])


def test_rank_stability_equals_a_loop_and_a_dominant_method_is_always_first():
    rng = np.random.default_rng(2)
    table = rng.normal(size=(3, 25))
    table[0] += 0.3
    table[2, 4] = np.nan
    result = st.rank_stability(["a", "b", "c"], table, higher_is_better=False, resamples=50, seed=4)
    draws = np.random.default_rng(4)
    rankings = []
    for _ in range(50):
        picks = draws.integers(0, 25, size=25)
        means = [np.nanmean(row[picks]) for row in table]
        rankings.append(stats.rankdata(means))  # lower is better: rank 1 = smallest mean
    rankings = np.array(rankings)
    assert result.w == pytest.approx(kendalls_w_by_hand(rankings.tolist()), rel=1e-12)
    first = (rankings == rankings.min(axis=1, keepdims=True)).mean(axis=0)
    assert list(result.first.values()) == pytest.approx(list(first))
    assert list(result.mean_rank.values()) == pytest.approx(list(rankings.mean(axis=0)))
    dominant = st.rank_stability(["good", "bad"], np.stack([table[1] + 100, table[1]]), resamples=20)
    assert dominant.first == {"good": 1.0, "bad": 0.0} and dominant.w == pytest.approx(1.0)


def test_intra_and_inter_consistency_by_hand():
    rng = np.random.default_rng(7)
    q = rng.normal(size=20)
    hat = np.stack([q + rng.normal(0, 0.01, 20), q + 3.0 + rng.normal(0, 0.1, 20)])
    keep = np.ones((2, 20), bool)
    keep[1, :5] = False
    p0 = stats.wilcoxon(q - hat[0]).pvalue
    p1 = stats.wilcoxon(q[5:] - hat[1, 5:]).pvalue
    assert st.intra_consistency(q, hat, keep, adversary=False) == pytest.approx((p0 + p1) / 2)
    assert st.intra_consistency(q, hat, keep, adversary=True) == pytest.approx((2 - p0 - p1) / 2)
    assert st.intra_consistency(q, q[None], np.ones((1, 20), bool), adversary=False) == 1.0
    original = np.array([[1.0, 5.0, 2.0], [2.0, 4.0, 3.0], [3.0, 3.0, 1.0]])  # 3 methods x 3 samples
    swapped = np.array([[1.0, 5.0, 3.0], [2.0, 4.0, 2.0], [3.0, 3.0, 1.0]])  # sample 2: methods 0, 1 swap
    keep = np.array([True, True, True])
    assert st.inter_consistency_resilience(original, swapped, keep) == pytest.approx(7 / 9)
    assert st.inter_consistency_resilience(original, swapped, np.array([True, True, False])) == 1.0
    lowered = original - np.array([[1.0], [0.0], [1.0]])
    assert st.inter_consistency_adversary(original, lowered, keep, higher_is_better=True) == pytest.approx(6 / 9)
    assert st.inter_consistency_adversary(original, lowered, keep, higher_is_better=False) == 0.0


def test_meta_consistency_rewards_a_metric_that_ignores_noise_and_reacts_to_disruption():
    rng = np.random.default_rng(9)
    methods = {"m1": rng.normal(1.0, 0.3, 30), "m2": rng.normal(0.0, 0.3, 30)}
    iterations, k = 3, 5
    resilience = {m: np.broadcast_to(v, (iterations, k, 30)).copy() for m, v in methods.items()}
    adversary = {m: v - 2.0 + rng.normal(0, 0.1, (iterations, k, 30)) for m, v in methods.items()}
    keep = np.ones((iterations, k, 30), bool)
    good = st.meta_consistency(methods, resilience, keep, adversary, keep, higher_is_better=True)
    assert good["IAC_NR"] == 1.0 and good["IEC_NR"] == 1.0 and good["IEC_AR"] == 1.0
    assert good["IAC_AR"] > 0.99 and good["MC"] > 0.99
    # a metric blind to disruption (same scores under the adversary) and moved by noise scores low
    noisy = {m: v + rng.normal(0, 1.0, (iterations, k, 30)) for m, v in methods.items()}
    blind = {m: np.broadcast_to(v, (iterations, k, 30)).copy() for m, v in methods.items()}
    bad = st.meta_consistency(methods, noisy, keep, blind, keep, higher_is_better=True)
    assert bad["IAC_AR"] == 0.0 and bad["IEC_AR"] == 0.0 and bad["MC"] < 0.5
