"""Paired statistics: does a gain of α over α = 1 survive seed noise?

Two arms trained on the same seeds (same initial weights, same data order) pair up seed by seed,
so the question is asked of the per-seed differences ``d = a − b``. Their mean gets a seeded
percentile-bootstrap CI (``scipy.stats.bootstrap``) and a two-sided paired t-test
(``scipy.stats.ttest_rel``). The verdict reads both in the direction the metric improves:
*confirmed* when the CI excludes 0 on the good side and p < 1 − confidence, *worse* the same on
the bad side, *not confirmed* otherwise.

Why the t-test too: a bootstrap CI never reaches beyond the data, and with few seeds it is about
their range. With 3 seeds the 95 % percentile CI *is* [min d, max d] (each extreme is drawn three
times over in 1/27 > 2.5 % of resamples), so the CI alone would confirm whenever all three seeds
improved, which happens 1 time in 8 with no effect at all. The paired t-test accounts for the
small sample; requiring both keeps "confirmed" to about the nominal 5 % false-alarm rate.
The percentile method rather than BCa: BCa's jackknife acceleration is unstable or undefined with
3–5 seeds.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

CONFIRMED, NOT_CONFIRMED, WORSE = "confirmed", "not confirmed", "worse"
UNCONFIRMED = "unconfirmed"
"""What a best α is called before any confirmation run finished on at least two seeds."""
VERDICTS = (CONFIRMED, NOT_CONFIRMED, WORSE)
RESAMPLES = 10_000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class PairedComparison:
    """Arm ``a`` against arm ``b`` over the same ``n`` seeds; differences are ``a − b`` in metric units."""

    n: int
    mode: str
    """"max" or "min": which direction of the metric is better."""
    mean_a: float
    std_a: float
    mean_b: float
    std_b: float
    """Sample standard deviations (ddof = 1) across seeds."""
    difference: float
    """Mean of the per-seed differences a − b."""
    ci_low: float
    ci_high: float
    """Percentile-bootstrap CI of ``difference`` (``confidence``, ``resamples``, ``seed``)."""
    p_value: float
    """Two-sided paired t-test (``scipy.stats.ttest_rel``); 1 when every difference is 0."""
    verdict: str
    confidence: float = CONFIDENCE
    resamples: int = RESAMPLES

    @property
    def improvement(self) -> float:
        """``difference`` signed so that positive is better under ``mode``."""
        return self.difference if self.mode == "max" else -self.difference


def compare_paired(
    a: Sequence[float],
    b: Sequence[float],
    mode: str,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> PairedComparison:
    """Compare arm ``a`` (e.g. the chosen α) with arm ``b`` (e.g. α = 1); ``a[i]`` and ``b[i]`` share a seed."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise ValueError(f"paired arms need equal-length 1-D values, got shapes {a_arr.shape} and {b_arr.shape}")
    if len(a_arr) < 2:
        raise ValueError(f"a paired comparison needs at least 2 seeds, got {len(a_arr)}")
    if not (np.isfinite(a_arr).all() and np.isfinite(b_arr).all()):
        raise ValueError("paired values must be finite")
    d = a_arr - b_arr
    ci = stats.bootstrap(
        (d,), np.mean, n_resamples=resamples, confidence_level=confidence, method="percentile",
        vectorized=True, rng=np.random.default_rng(seed),
    ).confidence_interval  # fmt: skip
    low, high = float(ci.low), float(ci.high)
    p = _paired_t_p(a_arr, b_arr)
    return PairedComparison(
        n=len(d), mode=mode,
        mean_a=float(a_arr.mean()), std_a=float(a_arr.std(ddof=1)),
        mean_b=float(b_arr.mean()), std_b=float(b_arr.std(ddof=1)),
        difference=float(d.mean()), ci_low=low, ci_high=high,
        p_value=p, verdict=verdict(low, high, p, mode, confidence),
        confidence=confidence, resamples=resamples,
    )  # fmt: skip


def verdict(ci_low: float, ci_high: float, p_value: float, mode: str, confidence: float = CONFIDENCE) -> str:
    """confirmed / worse when the CI of a − b excludes 0 on the better / worse side under ``mode``
    and the paired test agrees (p < 1 − confidence); see the module docstring for why both."""
    if p_value >= 1 - confidence:
        return NOT_CONFIRMED
    better_low, better_high = (ci_low, ci_high) if mode == "max" else (-ci_high, -ci_low)
    if better_low > 0:
        return CONFIRMED
    if better_high < 0:
        return WORSE
    return NOT_CONFIRMED


def _paired_t_p(a: np.ndarray, b: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-constant differences: precision note only
        p = float(stats.ttest_rel(a, b).pvalue)
    # NaN only when every difference is exactly 0 (t = 0/0): no evidence of any difference.
    return p if math.isfinite(p) else 1.0


@dataclass(frozen=True)
class ControlShare:
    """How much of α's gain over α = 1 a control arm (α = 1 with one part of α's density, ``analysis.arms``)
    reproduces, on the seeds where α, α = 1 and the control all finished."""

    gain: float
    """Mean improvement of α over α = 1 (positive = better) on those seeds."""
    control_gain: float
    """Mean improvement of the control over α = 1 on the same seeds."""
    explained: float | None
    """control_gain / gain: 1 means the control reproduces all of α's gain, 0 none of it; None when the gain
    is 0 (nothing to share) or negative (α lost: a share of a loss reads backwards)."""
    versus_baseline: PairedComparison
    """The control against α = 1: its paired difference, CI, test and verdict."""
    beyond: PairedComparison
    """α against the control: is anything left once the control's part is matched?"""


def control_share(
    alpha: Sequence[float], baseline: Sequence[float], control: Sequence[float], mode: str, **bootstrap
) -> ControlShare:
    """Split α's gain over α = 1 into the part a control reproduces and the rest (paired, seed by seed)."""
    alpha_arr, base_arr, control_arr = (np.asarray(x, dtype=float) for x in (alpha, baseline, control))
    if not alpha_arr.shape == base_arr.shape == control_arr.shape:
        raise ValueError(f"the three arms need one value per seed each, got {len(alpha_arr)}, "
                         f"{len(base_arr)} and {len(control_arr)}")
    sign = 1.0 if mode == "max" else -1.0
    gain = float(sign * (alpha_arr - base_arr).mean())
    control_gain = float(sign * (control_arr - base_arr).mean())
    return ControlShare(
        gain=gain,
        control_gain=control_gain,
        explained=control_gain / gain if gain > 0 else None,
        versus_baseline=compare_paired(control_arr, base_arr, mode, **bootstrap),
        beyond=compare_paired(alpha_arr, control_arr, mode, **bootstrap),
    )
