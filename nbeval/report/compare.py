"""Tonight against the baseline, suite by suite, on the same samples.

Every overall metric that a suite computes as a mean over per-sample values is compared *paired*:
the per-sample differences (same samples, same seeds) carry the comparison, so sample-to-sample
variance cancels. Binary per-sample checks (all values 0 or 1) are decided by the exact McNemar
test on the discordant samples (pass → fail vs fail → pass); the others by a paired bootstrap CI of
the mean difference. All paired tests of a report form one family: each runs at α / k (Bonferroni),
so a nightly report with many metrics does not cry wolf 5% of the time per metric. Suite-level
statistics that are not per-sample means (an AUC, a slope) are shown side by side, not gated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

from nbeval.report.load import RunData, SuiteData
from nbeval.stats import Estimate, paired_difference

POWER = 0.8
REGRESSED, IMPROVED, NO_CHANGE, NOT_PAIRED = "regressed", "improved", "no detectable change", "not paired"


@dataclass
class MetricComparison:
    suite: str
    metric: str
    higher_is_better: bool | None
    tonight: dict
    baseline: dict
    paired: bool = False
    binary: bool = False
    n: int = 0
    difference: Estimate | None = None  # tonight − baseline, CI at the family-wise level
    mcnemar: tuple[int, int, float] | None = None  # (pass → fail, fail → pass, exact p)
    mde: float | None = None  # smallest |difference| this n detects with 80% power at the family level
    verdict: str = NOT_PAIRED
    flips: dict[str, list[str]] = field(default_factory=dict)  # "pass_to_fail" / "fail_to_pass" → sample ids


@dataclass
class SuiteComparison:
    suite: str
    metrics: list[MetricComparison]

    @property
    def verdict(self) -> str:
        verdicts = {m.verdict for m in self.metrics}
        return REGRESSED if REGRESSED in verdicts else IMPROVED if IMPROVED in verdicts else NO_CHANGE


def incompatibilities(tonight: RunData, baseline: RunData) -> list[str]:
    """Why the two runs cannot be compared (empty when they can): other samples, another suite
    version, or other scorer weights for a scorer both runs used."""
    problems = []
    for name in sorted(set(tonight.suites) & set(baseline.suites)):
        t, b = tonight.results["suites"][name], baseline.results["suites"][name]
        if t["samples_fingerprint"] != b["samples_fingerprint"]:
            problems.append(f"{name}: the baseline used other samples (n, seed or suite parameters differ)")
        if t["version"] != b["version"]:
            problems.append(f"{name}: suite version {t['version']} tonight, {b['version']} in the baseline")
    for role in sorted(set(tonight.results["scorers"]) & set(baseline.results["scorers"])):
        if tonight.results["scorers"][role]["fingerprint"] != baseline.results["scorers"][role]["fingerprint"]:
            problems.append(f"scorer {role}: other weights or settings tonight than in the baseline")
    if not set(tonight.suites) & set(baseline.suites):
        problems.append(f"no suite in common (tonight: {sorted(tonight.suites)}, baseline: {sorted(baseline.suites)})")
    return problems


def per_sample(scores: pd.DataFrame) -> pd.DataFrame:
    """sample_id × metric: each sample's value, the mean over its turns; failed rows left out."""
    ok = scores[scores["error"].isna()] if "error" in scores else scores
    return ok.groupby(["sample_id", "metric"])["value"].mean().unstack()


def mcnemar(before: np.ndarray, after: np.ndarray) -> tuple[int, int, float]:
    """Exact two-sided McNemar test for paired 0/1 checks: (pass → fail, fail → pass, p)."""
    from scipy.stats import binomtest

    lost, gained = int(((before == 1) & (after == 0)).sum()), int(((before == 0) & (after == 1)).sum())
    p = binomtest(min(lost, gained), lost + gained, 0.5).pvalue if lost + gained else 1.0
    return lost, gained, float(p)


def minimum_detectable_effect(diffs: np.ndarray, base: np.ndarray, alpha: float, binary: bool) -> float | None:
    """|difference| detectable with 80% power at level `alpha` (two-sided), normal approximation.
    The spread is that of the paired differences, or, when tonight equals the baseline sample for
    sample, √2 × the baseline's (no pairing benefit assumed). A binary check also needs enough
    discordant samples for exact McNemar: at least ⌊log2(2/α)⌋ + 1 one-way flips."""
    n = len(diffs)
    if n < 2:
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(POWER)
    spread = float(np.std(diffs, ddof=1)) or math.sqrt(2) * float(np.std(base, ddof=1))
    mde = z * spread / math.sqrt(n) if spread > 0 else None
    if binary:
        flips = (math.floor(math.log2(2 / alpha)) + 1) / n
        mde = max(mde or 0.0, flips)
    return mde


def _direction(diff: float, higher_is_better: bool | None, t_mean: float, b_mean: float) -> str:
    if higher_is_better is None:  # closer to zero is better
        return REGRESSED if abs(t_mean) > abs(b_mean) else IMPROVED
    return IMPROVED if (diff > 0) == higher_is_better else REGRESSED


def compare_suite(tonight: SuiteData, baseline: SuiteData, alpha: float) -> SuiteComparison:
    """Every overall metric of the suite (breakdowns such as `cer/length_3` are left to the plots);
    `alpha` is the per-test level (already divided by the family size)."""
    t_vals, b_vals = per_sample(tonight.scores), per_sample(baseline.scores)
    common = t_vals.index.intersection(b_vals.index)
    out = []
    for metric, t_est in tonight.record["metrics"].items():
        if "/" in metric or metric not in baseline.record["metrics"]:
            continue
        c = MetricComparison(tonight.name, metric, t_est.get("higher_is_better"), t_est, baseline.record["metrics"][metric])
        if metric in t_vals and metric in b_vals:
            t, b = t_vals.loc[common, metric].astype(float), b_vals.loc[common, metric].astype(float)
            both = t.notna() & b.notna()
            t, b = t[both], b[both]
            c.paired, c.n = True, len(t)
            c.binary = bool(len(t)) and set(np.unique(np.r_[t.to_numpy(), b.to_numpy()])) <= {0.0, 1.0}
            c.difference = paired_difference(t, b, confidence=1 - alpha)
            c.mde = minimum_detectable_effect((t - b).to_numpy(), b.to_numpy(), alpha, c.binary)
            if c.binary:
                c.mcnemar = mcnemar(b.to_numpy(), t.to_numpy())
                c.flips = {"pass_to_fail": list(t.index[(b == 1) & (t == 0)]), "fail_to_pass": list(t.index[(b == 0) & (t == 1)])}
                significant = c.mcnemar[2] < alpha
            else:
                significant = c.difference.ci_low > 0 or c.difference.ci_high < 0
            c.verdict = _direction(c.difference.value, c.higher_is_better, t.mean(), b.mean()) if significant else NO_CHANGE
        out.append(c)
    return SuiteComparison(tonight.name, out)


def family_size(tonight: RunData, baseline: RunData) -> int:
    """How many paired tests the report makes (the Bonferroni divisor)."""
    k = 0
    for name in set(tonight.suites) & set(baseline.suites):
        t_cols, b_cols = set(per_sample(tonight.suites[name].scores)), set(per_sample(baseline.suites[name].scores))
        k += sum(1 for m in tonight.suites[name].record["metrics"] if "/" not in m and m in t_cols and m in b_cols and m in baseline.suites[name].record["metrics"])
    return max(k, 1)


def compare(tonight: RunData, baseline: RunData, alpha: float = 0.05) -> list[SuiteComparison]:
    level = alpha / family_size(tonight, baseline)
    return [compare_suite(tonight.suites[s], baseline.suites[s], level) for s in tonight.suites if s in baseline.suites]
