import math

import pytest
import torch

from al.training.metrics import (
    calibration_curve,
    calibration_scale,
    gaussian_nll,
    miscalibration_area,
    regression_report,
    spearman,
)


def test_spearman_known_values() -> None:
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, torch.tensor([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)
    assert spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(
        math.sqrt(3) / 2
    )  # ties get their mean rank
    assert math.isnan(spearman(torch.ones(3), a[:3]))


def test_nll_of_standard_normal() -> None:
    mean, std, y = torch.zeros(1), torch.ones(1), torch.zeros(1)
    assert gaussian_nll(mean, std, y) == pytest.approx(0.5 * math.log(2 * math.pi))


def test_miscalibration_area() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(200_000, generator=gen, dtype=torch.float64)
    zero, one = torch.zeros_like(y), torch.ones_like(y)
    assert miscalibration_area(zero, one, y) < 0.01  # calibrated
    assert miscalibration_area(zero, 0.2 * one, y) > 0.2  # overconfident


def test_regression_report_keys() -> None:
    r = regression_report(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.0]), torch.ones(2))
    assert r["mae"] == pytest.approx(0.25) and r["max_ae"] == pytest.approx(0.5)
    assert {"nll", "spearman_std_err", "miscalibration_area", "mean_std"} <= set(r)
    assert "nll" not in regression_report(torch.zeros(2), torch.zeros(2))


def test_calibration_scale_recovers_a_known_scale() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 100_000
    std = 0.05 + torch.rand(n, generator=gen, dtype=torch.float64)  # heteroscedastic
    err = 3.0 * std * torch.randn(n, generator=gen, dtype=torch.float64)  # true scale 3
    mean = torch.randn(n, generator=gen, dtype=torch.float64)
    s = calibration_scale(mean, std, mean + err)
    assert s == pytest.approx(3.0, rel=0.01)
    # it is the NLL minimiser: scaling by s beats nearby factors
    nll = [gaussian_nll(mean, f * std, mean + err) for f in (0.9 * s, s, 1.1 * s)]
    assert nll[1] < nll[0] and nll[1] < nll[2]
    assert calibration_scale(mean[:0], std[:0], mean[:0]) == 1.0


def test_calibration_curve_lies_on_the_diagonal_when_calibrated() -> None:
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(100_000, generator=gen, dtype=torch.float64)
    zero, one = torch.zeros_like(y), torch.ones_like(y)
    expected, observed = calibration_curve(zero, one, y, n_levels=9)
    assert expected.shape == observed.shape == (9,)
    assert float(expected[0]) == pytest.approx(0.01) and float(expected[-1]) == pytest.approx(0.99)
    assert (observed - expected).abs().max() < 0.01
    _, over = calibration_curve(zero, 0.5 * one, y, n_levels=9)
    assert (over < expected).all()  # overconfident: fewer targets inside than promised
    area = miscalibration_area(zero, 0.5 * one, y, n_levels=9)
    assert area == pytest.approx(float((over - expected).abs().mean()))


def test_regression_report_with_raw_std() -> None:
    r = regression_report(torch.zeros(3), torch.ones(3), 2 * torch.ones(3), torch.ones(3))
    assert r["nll_raw"] == pytest.approx(gaussian_nll(torch.zeros(3), torch.ones(3), torch.ones(3)))
    assert r["nll"] != r["nll_raw"] and "miscalibration_area_raw" in r


def test_regression_report_percentiles_of_the_absolute_error() -> None:
    """|err| = 0, 1, ..., 100: the q-th percentile (linear interpolation) is q itself."""
    err = torch.arange(101, dtype=torch.float64)
    r = regression_report(err, torch.zeros(101))
    assert r["p95_ae"] == pytest.approx(95.0) and r["p99_ae"] == pytest.approx(99.0)
    assert r["max_ae"] == 100.0 and r["mae"] <= r["p95_ae"] <= r["p99_ae"] <= r["max_ae"]
    empty = regression_report(torch.zeros(0), torch.zeros(0))
    assert math.isnan(empty["p95_ae"]) and math.isnan(empty["p99_ae"])
