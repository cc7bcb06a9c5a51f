"""The statistics behind a recheckable report, on hand examples: Holm's adjustment, the
t-test, the paired bootstrap, reliability bins and z-scores, the one meaning of "±", and
the arm colours and uncertainty figures."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from al.plots import arm_colours, calibration_figure, plot_reliability, plot_z_histograms
from al.report import bootstrap, build, display, stats, uncertainty
from al.training.metrics import calibration_curve


def test_holm_on_a_hand_example() -> None:
    """p = 0.01, 0.04, 0.03, 0.005 (m = 4): sorted, 4 x 0.005 = 0.02, 3 x 0.01 = 0.03,
    2 x 0.03 = 0.06, then 1 x 0.04 = 0.04 raised to the running maximum 0.06."""
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])  # not a comparison: not counted in m either
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([0.02]) == pytest.approx([0.02])  # one comparison: unchanged
    assert stats.holm([]).size == 0 and np.isnan(stats.holm([math.nan])).all()
    # against alpha = 0.05 Holm rejects 0.005 and 0.01 only; Bonferroni (x4) only 0.005
    assert (stats.holm([0.01, 0.04, 0.03, 0.005]) < 0.05).tolist() == [True, False, False, True]


def test_t_test_is_scipys_one_sample_test_and_exact_without_spread() -> None:
    d = np.array([-0.012, -0.008, -0.015, -0.004])
    t, p = stats.t_test(d)
    ref = sps.ttest_1samp(d, 0.0)
    assert (t, p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)
    assert stats.t_test([0.5, 0.5, 0.5]) == (math.inf, 0.0)
    assert stats.t_test([-0.25, -0.25]) == (-math.inf, 0.0)
    assert stats.t_test([0.0, 0.0]) == (0.0, 1.0)
    assert all(math.isnan(v) for v in stats.t_test([0.3, math.nan]))
    # the verdict on p agrees with the verdict on the interval (unadjusted)
    ci = stats.mean_ci(d)
    assert stats.verdict_p(ci.mean, p, ci.n) == stats.verdict(ci) == stats.BETTER
    assert stats.verdict_p(ci.mean, 0.051, ci.n) == stats.NO_DIFFERENCE
    assert stats.verdict_p(0.01, 0.001, 4) == stats.WORSE
    assert stats.verdict_p(0.01, 0.001, 1) == stats.TOO_FEW


def test_bootstrap_of_a_constant_shift_is_that_shift() -> None:
    rng = np.random.default_rng(0)
    ref = np.abs(rng.normal(0, 0.1, (3, 50)))
    ci = bootstrap.paired_bootstrap(ref + 0.01, ref, n_resamples=300)
    assert (ci.mean, ci.lo, ci.hi) == pytest.approx((0.01, 0.01, 0.01), abs=1e-12)
    assert ci.rel == pytest.approx(0.01 / ref.mean())
    assert ci.rel_lo <= ci.rel <= ci.rel_hi
    assert (ci.n_pairs, ci.n_molecules, ci.n_resamples) == (3, 50, 300)
    with pytest.raises(ValueError, match="want equal"):
        bootstrap.paired_bootstrap(ref, ref[:, :10])


def test_bootstrap_is_seeded_chunk_free_and_as_wide_as_the_standard_error() -> None:
    rng = np.random.default_rng(1)
    a, r = np.abs(rng.normal(0, 0.1, (4, 300))), np.abs(rng.normal(0, 0.12, (4, 300)))
    one = bootstrap.paired_bootstrap(a, r, 500, seed=3)
    assert one == bootstrap.paired_bootstrap(a, r, 500, seed=3, chunk_values=777)
    assert one != bootstrap.paired_bootstrap(a, r, 500, seed=4)
    # one pair: the molecules alone; the interval is mean ± 1.96 sd/√M (normal limit)
    d = rng.normal(0.02, 0.1, 4000)
    ci = bootstrap.paired_bootstrap((d + 1)[None, :], np.ones((1, d.size)), 2000)
    half = 1.959964 * d.std(ddof=1) / math.sqrt(d.size)
    assert (ci.hi - ci.lo) / 2 == pytest.approx(half, rel=0.1)
    assert ci.lo < d.mean() < ci.hi
    # seeds that disagree widen the interval beyond the molecules' share
    spread = a + np.array([[-0.02], [0.0], [0.02], [0.04]])
    wide = bootstrap.paired_bootstrap(spread, r, 500)
    assert wide.hi - wide.lo > 2 * (one.hi - one.lo)


def test_aligned_errors_keep_the_molecules_every_run_predicted() -> None:
    import pandas as pd

    def table(rid: str, idx: list[int], err: float) -> pd.DataFrame:
        return pd.DataFrame(dict(run_id=rid, step=200.0, source="converged", qm9_index=idx,
                                 target=0.0, mean=err, std=np.nan, std_raw=np.nan))  # fmt: skip

    pred = pd.concat(
        [table("a0", [1, 2, 3], 0.1), table("b0", [3, 2, 1], -0.3), table("a1", [1, 2], 0.2),
         table("b1", [2, 1, 9], 0.4)],
        ignore_index=True,
    )  # fmt: skip
    abs_a, abs_b, largest = bootstrap.aligned_errors(pred, [("a0", "b0"), ("a1", "b1")], 200.0)
    assert abs_a == pytest.approx(np.array([[0.1, 0.1], [0.2, 0.2]])) and largest == 3
    assert abs_b == pytest.approx(np.array([[0.3, 0.3], [0.4, 0.4]]))
    empty, _, _ = bootstrap.aligned_errors(pred, [("a0", "missing")], 200.0)
    assert empty.size == 0


def test_reliability_bins_and_z_scores_on_hand_examples() -> None:
    std = np.array([1.0, 2.0, 3.0, 4.0, 0.0, np.nan])
    err = np.array([0.0, 2.0, 3.0, 5.0, 1.0, 1.0])  # the last two have no usable std
    bins = uncertainty.reliability_bins(std, err, n_bins=2)
    assert bins["n"].tolist() == [2, 2]
    assert bins["rmv"].tolist() == pytest.approx([math.sqrt(2.5), math.sqrt(12.5)])
    assert bins["rmse"].tolist() == pytest.approx([math.sqrt(2.0), math.sqrt(17.0)])
    assert bins[["std_lo", "std_hi"]].to_numpy() == pytest.approx(np.array([[1, 2], [3, 4]]))
    z = uncertainty.z_scores(np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 0.0]),
                             np.array([1.0, 4.0, np.nan]))  # fmt: skip
    assert z.tolist() == [1.0, 0.5]
    # a calibrated Gaussian: every bin on y = x, z ~ N(0, 1)
    rng = np.random.default_rng(5)
    s = rng.lognormal(-2.0, 0.7, 20_000)
    e = s * rng.standard_normal(s.size)
    bins = uncertainty.reliability_bins(s, e)
    assert len(bins) == uncertainty.MAX_BINS and bins["n"].sum() == s.size
    assert bins["rmse"].to_numpy() / bins["rmv"].to_numpy() == pytest.approx(1.0, abs=0.06)
    cal = uncertainty.calibration(s, e)
    assert cal["sd_z"] == pytest.approx(1.0, abs=0.02)
    assert cal["coverage_95"] == pytest.approx(0.95, abs=0.006)
    over = uncertainty.calibration(s / 2, e)  # over-confident: z twice too wide
    assert over["sd_z"] == pytest.approx(2.0, abs=0.04) and over["coverage_95"] < 0.7
    assert uncertainty.calibration(np.full(3, np.nan), np.ones(3))["n"] == 0


def test_plus_minus_is_one_half_width_everywhere() -> None:
    """Every display of a t-interval is "mean ± half-width"; a single seed says so; the
    seeds behind a value are named where they differ from the row's."""
    assert display._ci(0.5, 0.4, 0.6, 3, 3) == "0.5 ± 0.1"
    assert display._ci(0.5, 0.4, 0.6, 2, 3) == "0.5 ± 0.1 (n=2)"
    assert display._diff(-0.012, -0.02, -0.004, 4) == "-0.0120 ± 0.0080"
    assert display._pct(0.035, -0.039, 0.109, 3) == "+3.5% ± 7.4%"
    assert display._pct(0.2) == "+20.0%"  # no interval: no ±
    for shown in (display._ci(0.5, math.nan, math.nan, 1), display._diff(0.1, 0.0, 0.2, 1),
                  display._pct(0.1, 0.0, 0.2, 1)):  # fmt: skip
        assert shown.endswith(f"± {stats.ONE_SEED}")
    assert display._bracket(-0.02, 0.01, lambda v: f"{v:+.4f}") == "[-0.0200, +0.0100]"
    assert display._p(0.00012345) == "0.00012" and display._p(math.nan) == "–"


def test_arm_colours_are_keyed_by_name_and_figures_use_them(tmp_path: Path) -> None:
    colours = arm_colours(["random", "lcmd", "max_std", "lcmd"])
    assert colours == arm_colours(["max_std", "random", "lcmd"])
    assert len(set(colours.values())) == 3
    assert len(set(arm_colours([f"a{i}" for i in range(14)]).values())) == 14
    rng = np.random.default_rng(2)
    s = rng.lognormal(-2, 0.5, 400)
    e = s * rng.standard_normal(400)
    bins = uncertainty.reliability_bins(s, e)
    rel = plot_reliability(
        [("lcmd", bins["rmv"].to_numpy(), bins["rmse"].to_numpy()),
         ("max_std", np.array([]), np.array([]))],
        colours, "reliability", tmp_path / "rel.png",
    )  # fmt: skip
    zh = plot_z_histograms([("lcmd", e / s), ("random", np.array([9.0, -0.5]))], colours,
                           "z", tmp_path / "z.png")  # fmt: skip
    expected, observed = calibration_curve(*(torch.tensor(a) for a in (np.zeros(400), s, e)))
    fig = calibration_figure([("max_std", expected.numpy(), observed.numpy(), s, np.abs(e))],
                             colours, "calibration")  # fmt: skip
    fig.savefig(tmp_path / "cal.png")
    for path, arm in ((rel, "lcmd"), (zh, "random"), (tmp_path / "cal.png", "max_std")):
        img = matplotlib.image.imread(path)[..., :3]
        want = np.array(matplotlib.colors.to_rgb(colours[arm]))
        near = np.abs(img - want).max(axis=-1) < 0.02
        # the z histogram's bars are drawn with alpha: look for the blended colour instead
        blended = 0.6 * want + 0.4 * np.ones(3)
        near |= np.abs(img - blended).max(axis=-1) < 0.02
        assert near.sum() > 20, path


def test_cost_curves_count_the_prior_labels() -> None:
    """An arm whose baseline was built on 2,500 DFT labels is drawn at its full cost; an arm
    without prior labels at its cost_spent; no cost_total at all: no curve."""
    rows = []
    for arm, prior in (("direct", None), ("delta", 2500.0)):
        for seed in (0, 1):
            for step, mae in ((1000, 0.1), (2000, 0.08)):
                total = None if prior is None else step + prior
                rows.append(dict(grid="g", arm=arm, run_id=f"{arm}{seed}", seed=seed, step=step,
                                 test_mae=mae + 0.001 * seed, cost_spent=float(step),
                                 cost_total=total))  # fmt: skip
    hist = pd.DataFrame(rows)
    curves = build.total_cost_curves(hist, 0.95)
    span = curves.groupby("arm")["x"].agg(["min", "max"])
    assert span.loc["direct"].tolist() == pytest.approx([1000.0, 2000.0])
    assert span.loc["delta"].tolist() == pytest.approx([3500.0, 4500.0])
    assert build.total_cost_curves(hist.drop(columns="cost_total"), 0.95).empty
