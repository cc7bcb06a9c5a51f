import math

import pytest
import torch

from al.training.metrics import gaussian_nll, miscalibration_area, regression_report, spearman


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
