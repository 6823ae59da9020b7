"""Statistics on per-sample metric values: what no XAI benchmark suite reports.

Everything here takes the per-sample values a metric returned (numpy arrays, NaN = undefined for that
sample) and never recomputes a metric:

- ``bootstrap_interval``: a seeded bootstrap confidence interval of the mean (percentile or BCa,
  Efron 1987), NaN values left out and counted;
- ``paired_tests``: Wilcoxon signed-rank tests between every pair of methods on the samples both have
  (``scipy.stats.wilcoxon``), Holm-corrected (Holm 1979), with the matched-pairs rank-biserial
  correlation as effect size (Kerby 2014);
- ``kendalls_w``, ``rank_stability`` and ``rank_agreement``: Kendall's coefficient of concordance of
  rankings (over bootstrap resamples of the samples, or across seeds) and each method's probability of
  ranking first;
- ``intra_consistency``, ``inter_consistency_*`` and ``meta_consistency``: MetaQuantus's
  meta-evaluation scores (Hedström et al., "The Meta-Evaluation Problem in Explainable AI", TMLR 2023)
  from unperturbed and perturbed scores (the perturbations are made by ``camkit_plugins.bench.meta``).

numpy and scipy only (no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

INTERVAL_METHODS = ("percentile", "bca")


def finite_values(values: Any) -> tuple[np.ndarray, int]:
    """The finite entries of ``values`` (float64, flattened) and how many were NaN or infinite."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    keep = np.isfinite(array)
    return array[keep], int((~keep).sum())


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap interval; ``count`` finite values, ``nan`` left out."""

    mean: float
    low: float
    high: float
    count: int
    nan: int
    confidence: float
    method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_means(values: np.ndarray, resamples: int, seed: int = 0, chunk: int = 256) -> np.ndarray:
    """``(resamples,)`` means of ``values`` resampled with replacement, drawn by
    ``numpy.random.default_rng(seed).integers(0, n, size=n)`` once per resample (in blocks of ``chunk``
    resamples: the same draws as a loop)."""
    n = len(values)
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        picks = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[picks].mean(axis=1)
    return out


def bootstrap_interval(values: Any, resamples: int = 1000, confidence: float = 0.95, method: str = "percentile",
                       seed: int = 0) -> Interval:
    """Bootstrap interval of the mean of the finite ``values``.

    ``method="percentile"``: the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
    ``resamples`` bootstrap means; ``"bca"``: bias-corrected and accelerated (Efron 1987): the quantile
    levels are moved by the bias ``z0 = Phi^-1(share of bootstrap means below the mean)`` and the jackknife
    acceleration ``a = sum(d^3) / (6 sum(d^2)^1.5)``, ``d = mean of the jackknife means - jackknife mean``.
    Fewer than two finite values give a NaN interval (one value: no spread to resample); all values
    equal give the degenerate interval [v, v]."""
    from scipy.special import ndtr, ndtri

    if method not in INTERVAL_METHODS:
        raise ValueError(f"interval method {method!r}: choose one of {', '.join(INTERVAL_METHODS)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    kept, nan = finite_values(values)
    n = len(kept)
    mean = float(kept.mean()) if n else float("nan")
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), n, nan, confidence, method)
    if np.all(kept == kept[0]):
        return Interval(mean, mean, mean, n, nan, confidence, method)
    means = bootstrap_means(kept, resamples, seed)
    levels = np.array([(1 - confidence) / 2, (1 + confidence) / 2])
    if method == "bca":
        z0 = ndtri(np.mean(means < mean))
        jackknife = (kept.sum() - kept) / (n - 1)
        d = jackknife.mean() - jackknife
        denominator = 6.0 * (d ** 2).sum() ** 1.5
        acceleration = (d ** 3).sum() / denominator if denominator > 0 else 0.0
        z = ndtri(levels)
        levels = ndtr(z0 + (z0 + z) / (1 - acceleration * (z0 + z)))
        if not np.all(np.isfinite(levels)):  # every bootstrap mean on one side: no correction is defined
            levels = np.array([(1 - confidence) / 2, (1 + confidence) / 2])
    low, high = np.quantile(means, levels)
    return Interval(mean, float(low), float(high), n, nan, confidence, method)


# ---------------------------------------------------------------- paired tests


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not counted in the family)."""
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    m = len(tested)
    order = tested[np.argsort(p[tested], kind="stable")]
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (m - position) * p[index]))
        adjusted[index] = running
    return adjusted


def signed_rank_sums(differences: np.ndarray) -> tuple[float, float, int]:
    """``(W+, W-, n)``: sums of the ranks of ``|d|`` (ties averaged) over positive and negative non-zero
    differences, and their number (zero differences dropped, as Wilcoxon's test does)."""
    from scipy.stats import rankdata

    d = differences[differences != 0]
    if len(d) == 0:
        return 0.0, 0.0, 0
    ranks = rankdata(np.abs(d))
    return float(ranks[d > 0].sum()), float(ranks[d < 0].sum()), len(d)


def rank_biserial(differences: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation ``(W+ - W-) / (W+ + W-)`` in [-1, 1] (Kerby 2014); 0 when
    every difference is zero."""
    plus, minus, n = signed_rank_sums(differences)
    return (plus - minus) / (plus + minus) if n else 0.0


@dataclass(frozen=True)
class PairTest:
    """One Wilcoxon signed-rank test: ``effect > 0`` means ``a`` is better in the metric's direction."""

    a: str
    b: str
    n: int
    nonzero: int
    statistic: float
    p: float
    p_holm: float
    effect: float
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def align(per_method: Mapping[str, tuple[Sequence[Any], Any]]) -> tuple[list[str], list[Any], np.ndarray]:
    """``{method: (sample ids, values)}`` -> ``(methods, ids, (M, N) matrix)`` over the union of the ids
    (sorted), NaN where a method has no value for a sample. A sample id twice for one method is an error."""
    methods = list(per_method)
    ids = sorted({i for ids_, _ in per_method.values() for i in ids_}, key=lambda i: (str(type(i)), i))
    position = {i: k for k, i in enumerate(ids)}
    table = np.full((len(methods), len(ids)), np.nan)
    for row, method in enumerate(methods):
        method_ids, values = per_method[method]
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(method_ids) != len(values):
            raise ValueError(f"{method}: {len(method_ids)} sample ids for {len(values)} values")
        if len(set(method_ids)) != len(method_ids):
            raise ValueError(f"{method}: a sample id appears twice")
        table[row, [position[i] for i in method_ids]] = values
    return methods, ids, table


def paired_tests(methods: Sequence[str], table: Any, higher_is_better: bool = True,
                 alpha: float = 0.05, tie_tolerance: float = 1e-6) -> list[PairTest]:
    """Wilcoxon signed-rank test (two-sided, zero differences dropped) for every pair of rows of the
    ``(M, N)`` ``table`` on the samples both have a finite value for; Holm-adjusted over the pairs that
    have a test; effect size = matched-pairs rank-biserial correlation of ``a - b`` (``b - a`` when lower
    is better). A difference within ``tie_tolerance`` x max(1, |a|, |b|) counts as zero: float noise
    (CAM and Grad-CAM agree to ~1e-7 on a GAP + linear head) must not become a "significant" difference
    of consistent sign. A pair whose differences are all zero gets p = 1; a pair with no common sample
    gets NaN. ``verdict``: ``"a better"``, ``"b better"`` or ``"n.s."`` at family-wise ``alpha``."""
    from scipy.stats import wilcoxon

    table = np.asarray(table, dtype=np.float64)
    rows = []
    for i in range(len(methods)):
        for j in range(i + 1, len(methods)):
            both = np.isfinite(table[i]) & np.isfinite(table[j])
            a, b = table[i, both], table[j, both]
            d = np.where(np.abs(a - b) <= tie_tolerance * np.maximum(1.0, np.maximum(np.abs(a), np.abs(b))), 0.0, a - b)
            if not higher_is_better:
                d = -d
            plus, minus, nonzero = signed_rank_sums(d)
            if not both.any():
                statistic, p = float("nan"), float("nan")
            elif nonzero == 0:
                statistic, p = 0.0, 1.0
            else:
                result = wilcoxon(d[d != 0])
                statistic, p = float(result.statistic), float(result.pvalue)
            effect = (plus - minus) / (plus + minus) if nonzero else 0.0
            rows.append([methods[i], methods[j], int(both.sum()), nonzero, statistic, p, effect])
    adjusted = holm([row[5] for row in rows])
    tests = []
    for row, p_holm in zip(rows, adjusted):
        verdict = "n.s." if not p_holm < alpha else ("a better" if row[6] > 0 else "b better")
        tests.append(PairTest(*row[:6], p_holm=float(p_holm), effect=row[6], verdict=verdict))
    return tests


# ---------------------------------------------------------------- rank stability


def rank_rows(scores: Any, higher_is_better: bool = True) -> np.ndarray:
    """Rank each row's entries (1 = best, ties averaged); NaN scores rank last (tied among themselves)."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    oriented = -scores if higher_is_better else scores
    oriented = np.where(np.isnan(oriented), np.inf, oriented)
    return rankdata(oriented, axis=1)


def kendalls_w(rankings: Any) -> float:
    """Kendall's coefficient of concordance of ``(m raters, n items)`` rankings (rank 1..n per row, ties
    averaged), with the tie correction: ``W = 12 S / (m^2 (n^3 - n) - m sum_j T_j)``, ``S`` = sum over
    items of the squared deviation of its rank sum from ``m (n + 1) / 2``, ``T_j = sum (t^3 - t)`` over the
    tie groups of rater j. 1 = every rater gives the same order; NaN when every rater ties every item."""
    ranks = np.asarray(rankings, dtype=np.float64)
    m, n = ranks.shape
    if n < 2:
        raise ValueError(f"Kendall's W needs at least two items to rank, got {n}")
    s = ((ranks.sum(axis=0) - m * (n + 1) / 2.0) ** 2).sum()
    ties = 0.0
    for row in ranks:
        _, counts = np.unique(row, return_counts=True)
        ties += float((counts ** 3 - counts).sum())
    denominator = m ** 2 * (n ** 3 - n) - m * ties
    return float(12.0 * s / denominator) if denominator > 0 else float("nan")


@dataclass(frozen=True)
class RankStability:
    """Kendall's W of the methods' rankings over bootstrap resamples, P(rank 1) and the mean rank."""

    w: float
    resamples: int
    first: dict[str, float]
    mean_rank: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_stability(methods: Sequence[str], table: Any, higher_is_better: bool = True, resamples: int = 200,
                   seed: int = 0) -> RankStability:
    """Rank the methods (rows of the ``(M, N)`` table) by their mean over each bootstrap resample of the
    samples (columns; the same resampled ids for every method, NaN left out of each mean) and measure how
    stable the order is: Kendall's W across the resamples, each method's share of resamples in which it
    ranks first (ties share first place) and its mean rank. Drawn by ``default_rng(seed)``."""
    table = np.asarray(table, dtype=np.float64)
    if len(methods) < 2:
        raise ValueError("rank stability needs at least two methods")
    n = table.shape[1]
    if n < 1:
        raise ValueError("rank stability needs at least one sample")
    rng = np.random.default_rng(seed)
    means = np.empty((resamples, len(methods)))
    finite = np.isfinite(table)
    values = np.where(finite, table, 0.0)
    for r in range(resamples):
        picks = rng.integers(0, n, size=n)
        counts = finite[:, picks].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[r] = np.where(counts > 0, values[:, picks].sum(axis=1) / counts, np.nan)
    return rank_agreement(methods, means, higher_is_better)


def rank_agreement(methods: Sequence[str], scores: Any, higher_is_better: bool = True) -> RankStability:
    """How much ``(R, M)`` scores of the methods agree on their order, one row per rater (a bootstrap
    resample, a seed): Kendall's W of the rows' rankings, each method's share of rows in which it ranks
    first (ties share first place; NaN ranks last) and its mean rank."""
    ranks = rank_rows(scores, higher_is_better)
    best = ranks.min(axis=1, keepdims=True)
    first = (ranks == best).mean(axis=0)
    return RankStability(w=kendalls_w(ranks), resamples=len(ranks),
                         first={m: float(f) for m, f in zip(methods, first)},
                         mean_rank={m: float(r) for m, r in zip(methods, ranks.mean(axis=0))})


# ---------------------------------------------------------------- meta-evaluation (MetaQuantus)


def intra_consistency(original: Any, perturbed: Any, keep: Any, adversary: bool) -> float:
    """MetaQuantus's IAC for one method: per perturbation k (rows of ``perturbed`` ``(K, N)``), the Wilcoxon
    signed-rank p-value between the unperturbed scores ``original`` ``(N,)`` and the perturbed ones on the
    samples ``keep[k]`` (and finite in both); the mean over k of p (noise resilience: scores should not
    move, 1 is ideal) or of 1 - p (``adversary``: they should, 1 is ideal). Identical scores give p = 1;
    a perturbation that keeps no sample is left out (NaN if none is left)."""
    from scipy.stats import wilcoxon

    original = np.asarray(original, dtype=np.float64)
    perturbed = np.atleast_2d(np.asarray(perturbed, dtype=np.float64))
    keep = np.atleast_2d(np.asarray(keep, dtype=bool))
    scores = []
    for row, kept in zip(perturbed, keep):
        use = kept & np.isfinite(row) & np.isfinite(original)
        if not use.any():
            continue
        d = original[use] - row[use]
        p = 1.0 if not np.any(d != 0) else float(wilcoxon(d[d != 0]).pvalue)
        scores.append(1.0 - p if adversary else p)
    return float(np.mean(scores)) if scores else float("nan")


def inter_consistency_resilience(original: Any, perturbed: Any, keep: Any) -> float:
    """MetaQuantus's IEC for noise resilience: ``original`` and ``perturbed`` are ``(M methods, N)``; per
    kept sample, the methods are sorted by score (stable) before and after; the share of (sample, rank
    position) where the same method sits (1 = the perturbation never changes the methods' order)."""
    original = np.asarray(original, dtype=np.float64)
    perturbed = np.asarray(perturbed, dtype=np.float64)
    keep = np.asarray(keep, dtype=bool)
    if not keep.any():
        return float("nan")
    before = np.argsort(original[:, keep], axis=0, kind="stable")
    after = np.argsort(perturbed[:, keep], axis=0, kind="stable")
    return float((before == after).mean())


def inter_consistency_adversary(original: Any, perturbed: Any, keep: Any, higher_is_better: bool = True) -> float:
    """MetaQuantus's IEC for adversary reactivity: the share of (method, kept sample) whose perturbed score
    is strictly worse than its unperturbed one (1 = a disruptive perturbation always lowers the score)."""
    original = np.asarray(original, dtype=np.float64)
    perturbed = np.asarray(perturbed, dtype=np.float64)
    keep = np.asarray(keep, dtype=bool)
    if not keep.any():
        return float("nan")
    worse = original > perturbed if higher_is_better else original < perturbed
    return float(worse[:, keep].mean())


def meta_consistency(original: Mapping[str, Any], resilience: Mapping[str, Any], resilience_keep: Any,
                     adversary: Mapping[str, Any], adversary_keep: Any,
                     higher_is_better: bool = True) -> dict[str, float]:
    """The four MetaQuantus scores and their mean MC for one metric and one kind of perturbation.

    ``original``: ``{method: (N,)}`` unperturbed scores; ``resilience`` / ``adversary``: ``{method: (I, K,
    N)}`` scores under I iterations of K minor / disruptive perturbations; ``*_keep``: ``(I, K, N)``
    booleans, the samples each perturbation keeps (resilience: prediction unchanged; adversary: changed).
    IAC is averaged over methods, iterations and perturbations, IEC over iterations and perturbations."""
    methods = list(original)
    q = np.stack([np.asarray(original[m], dtype=np.float64) for m in methods])
    result = {}
    for name, perturbed, keep, is_adversary in (("NR", resilience, resilience_keep, False),
                                                  ("AR", adversary, adversary_keep, True)):
        hat = np.stack([np.asarray(perturbed[m], dtype=np.float64) for m in methods])  # (M, I, K, N)
        keep = np.asarray(keep, dtype=bool)
        iac = [intra_consistency(q[m], hat[m, i], keep[i], is_adversary)
               for m in range(len(methods)) for i in range(hat.shape[1])]
        iec = []
        for i in range(hat.shape[1]):
            for k in range(hat.shape[2]):
                finite = keep[i, k] & np.isfinite(q).all(axis=0) & np.isfinite(hat[:, i, k]).all(axis=0)
                iec.append(inter_consistency_adversary(q, hat[:, i, k], finite, higher_is_better) if is_adversary
                           else inter_consistency_resilience(q, hat[:, i, k], finite))
        result[f"IAC_{name}"] = _nanmean(iac)
        result[f"IEC_{name}"] = _nanmean(iec)
    result["MC"] = _nanmean([result["IAC_NR"], result["IAC_AR"], result["IEC_NR"], result["IEC_AR"]])
    return result


def _nanmean(values: Sequence[float]) -> float:
    array = np.asarray(values, dtype=np.float64)
    return float(array[np.isfinite(array)].mean()) if np.isfinite(array).any() else float("nan")
