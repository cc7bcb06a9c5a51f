"""Oracles: every registered one keeps the label contract; dft, xtb and model in detail."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from al.data.molecules import MolecularData
from al.data.splits import make_splits
from al.oracles import (
    FRAME_COLUMNS,
    ORACLES,
    LabelResult,
    ModelOracle,
    Oracle,
    OracleError,
    XTBOracle,
    build_oracle,
    fit_xtb_reference,
    load_xtb_reference,
    oracle_choices,
)
from al.oracles import xtb as xtb_module

#: Methane, ammonia, water, acetylene, hydrogen cyanide.
SMALL = [1, 2, 3, 4, 5]
UNKNOWN = 999_999


class AtomCountModel(mlflow.pyfunc.PythonModel):
    """A stand-in oracle model: -4 eV per atom, NaN for molecules of more than 8 atoms."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        n = np.array([len(z) for z in model_input["z"]], dtype=np.float64)
        mean = np.where(n > 8, np.nan, -4.0 * n)
        return pd.DataFrame({"mean_ev": mean, "std_ev": np.full(n.size, np.nan)})


@pytest.fixture(scope="module")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """URI of a pyfunc model saved to disk (no tracking server needed)."""
    path = tmp_path_factory.mktemp("oracle-model") / "model"
    mlflow.pyfunc.save_model(str(path), python_model=AtomCountModel(), pip_requirements=[])
    return str(path)


#: Specs of the oracles whose default is too slow for these tests.
CHEAP_SPECS = {"pyscf": "pyscf:b3lyp/sto-3g"}


def spec_of(name: str, local_model: str) -> str:
    """A buildable spec for each registered oracle (those taking an argument get a model;
    a live DFT one a small basis).

    Skips the test for an oracle that cannot work here (``pyg_schnet`` offline)."""
    reason = ORACLES[name].unavailable_reason()
    if reason:
        pytest.skip(reason)
    if name in CHEAP_SPECS:
        return CHEAP_SPECS[name]
    return f"{name}:{local_model}" if ORACLES[name].argument else name


@pytest.mark.parametrize("name", list(ORACLES))
def test_every_oracle_keeps_the_label_contract(name: str, qm9, local_model: str) -> None:
    oracle = build_oracle(spec_of(name, local_model), data=qm9)
    assert isinstance(oracle, Oracle)
    assert oracle.kind() == name
    request = np.array([3, UNKNOWN, 1, -5, 2, 3])
    if oracle.answers_later:  # external: answered outside the process, never called
        with pytest.raises(OracleError, match="al ingest"):
            oracle.label(request)
        return
    result = oracle.label(request)

    assert isinstance(result, LabelResult)
    np.testing.assert_array_equal(result.qm9_index, request)  # every row, in request order
    assert result.value.dtype == np.float64 and result.cost.dtype == np.float64
    assert result.oracle == oracle.name
    known = np.array([True, False, True, False, True, True])
    assert list(result.status[~known]) == ["unknown_molecule"] * 2
    assert result.ok[known].all() and not result.ok[~known].any()
    assert np.isfinite(result.value[known]).all() and np.isnan(result.value[~known]).all()
    if oracle.cost_measured:  # what each label took (pyscf: CPU-hours), the same each time
        assert (result.cost[known] > 0).all() and (result.cost[~known] == 0).all()
        assert result.cost[0] == result.cost[-1]
    else:
        np.testing.assert_allclose(result.cost, np.where(known, oracle.cost_per_label, 0.0))
        assert result.total_cost == pytest.approx(4 * oracle.cost_per_label)

    frame = result.to_frame()
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert len(frame) == request.size and (frame["oracle"] == oracle.name).all()

    info = oracle.describe()
    assert info["kind"] == name and info["cost_per_label"] == oracle.cost_per_label
    assert build_oracle(spec_of(name, local_model), data=qm9, cost=2.5).cost_per_label == 2.5


@pytest.mark.parametrize("name", list(ORACLES))
def test_empty_request(name: str, qm9, local_model: str) -> None:
    result = build_oracle(spec_of(name, local_model), data=qm9).label(np.array([], np.int64))
    assert len(result) == 0 and list(result.to_frame().columns) == list(FRAME_COLUMNS)


def test_default_costs_order_the_fidelities(qm9, local_model: str) -> None:
    usable = [n for n in ORACLES if not ORACLES[n].unavailable_reason()]
    costs = {n: build_oracle(spec_of(n, local_model), data=qm9).cost_per_label for n in usable}
    expected = {"dft": 1.0, "xtb": 0.01, "model": 0.001, "pretrained": 0.001, "pyg_schnet": 0.001,
                "ani1x": 0.001, "ani1ccx": 0.001, "pyscf": 0.1, "external": 1.0}  # fmt: skip
    assert costs == {n: expected[n] for n in usable}


def test_dft_returns_the_qm9_target(qm9) -> None:
    oracle = build_oracle("dft", data=qm9)
    request = torch.tensor([1, 100, 133885, 50])  # tensors are accepted too
    result = oracle.label(request)
    assert result.value[0] == pytest.approx(-17.3897, abs=1e-4)  # methane
    np.testing.assert_array_equal(result.value, qm9.y[qm9.rows_of(request)].numpy())
    assert result.total_cost == pytest.approx(4 * 1.0)


def test_dft_missing_target_is_a_failure(qm9) -> None:
    tiny = qm9.subset(qm9.rows_of([1, 2]))
    tiny.y = torch.tensor([float("nan"), -12.0], dtype=torch.float64)
    result = build_oracle("dft", data=tiny, cost=3.0).label([1, 2])
    assert list(result.status) == ["missing_target", "ok"]
    assert math.isnan(result.value[0]) and result.value[1] == -12.0
    assert list(result.cost) == [3.0, 3.0]  # the oracle was asked: charged either way


def test_non_integer_indices_are_rejected(qm9) -> None:
    oracle = build_oracle("dft", data=qm9)
    assert oracle.label(np.array([1.0, 2.0])).ok.all()
    with pytest.raises(TypeError, match="integers"):
        oracle.label(np.array([1.5]))


def test_xtb_tracks_dft_on_small_molecules(qm9) -> None:
    result = build_oracle("xtb", data=qm9).label(SMALL)
    assert list(result.status) == ["ok"] * len(SMALL)
    dft = qm9.y[qm9.rows_of(SMALL)].numpy()
    assert np.abs(result.value - dft).max() < 2.0
    assert result.total_cost == pytest.approx(len(SMALL) * 0.01)


def _with_broken_molecule(qm9) -> MolecularData:
    """Methane and water from QM9 plus a methane whose first H sits on its carbon."""
    tiny = qm9.subset(qm9.rows_of([1, 3, 1]))
    tiny.qm9_index = torch.tensor([1, 3, 7_000_000])
    a = int(tiny.ptr[2])
    tiny.pos = tiny.pos.clone()
    tiny.pos[a + 1] = tiny.pos[a]
    return tiny


def test_xtb_failure_is_recorded_and_the_rest_succeeds(qm9) -> None:
    oracle = build_oracle("xtb", data=_with_broken_molecule(qm9))
    result = oracle.label([1, 7_000_000, 3])
    assert list(result.status) == ["ok", "error:TBLiteRuntimeError", "ok"]
    assert np.isnan(result.value[1]) and np.isfinite(result.value[[0, 2]]).all()
    np.testing.assert_allclose(result.cost, [0.01] * 3)  # the failed one was attempted


def test_xtb_scf_failure_and_non_finite_energy(qm9, monkeypatch: pytest.MonkeyPatch) -> None:
    real = xtb_module.xtb_energy_hartree

    def flaky(z, pos, **kw):
        if len(z) == 3:  # water
            raise RuntimeError("SCF not converged in 250 cycles")
        if len(z) == 4:  # ammonia
            return float("nan")
        return real(z, pos, **kw)

    monkeypatch.setattr(xtb_module, "xtb_energy_hartree", flaky)
    result = build_oracle("xtb", data=qm9).label([3, 2, 1])
    assert list(result.status) == ["scf_not_converged", "non_finite", "ok"]
    assert np.isnan(result.value[:2]).all() and np.isfinite(result.value[2])


def test_xtb_timeout_and_max_iter(qm9) -> None:
    assert list(XTBOracle(qm9, timeout_s=1e-9).label([1, 2]).status) == ["timeout"] * 2
    assert list(XTBOracle(qm9, max_iter=1).label([5]).status) == ["scf_not_converged"]


def test_packaged_xtb_reference_was_fitted_on_the_default_oracle_split(qm9) -> None:
    ref = load_xtb_reference()
    assert sorted(ref.coefficients_ev) == [1, 6, 7, 8, 9]
    assert ref.meta["split_digest"] == make_splits(qm9.qm9_index.numpy()).digest()
    assert ref.meta["fit_mae_ev"] < 1.0 and ref.meta["n_fit"] >= 1000


def test_xtb_reference_fit_recovers_a_per_element_offset() -> None:
    gen = np.random.default_rng(0)
    comp = gen.integers(0, 6, size=(60, 5)).astype(np.float64)  # H, C, N, O, F counts
    energy = gen.normal(-20.0, 5.0, size=60)
    true_c = np.array([-0.5, -3.0, -2.0, -1.5, -1.0])
    target = 27.211386 * energy + comp @ true_c
    energy[7] = np.nan  # a failed xTB run: left out of the fit, counted
    fit = np.arange(60) < 40
    rec = fit_xtb_reference(energy, comp, target, fit)
    assert list(rec["coefficients_ev"]) == ["H", "C", "N", "O", "F"]
    np.testing.assert_allclose(list(rec["coefficients_ev"].values()), true_c, atol=1e-8)
    assert (rec["n_fit"], rec["n_heldout"], rec["n_failed"]) == (39, 20, 1)
    assert rec["fit_mae_ev"] < 1e-8 and rec["heldout_mae_ev"] < 1e-8
    assert rec["heldout_composition_only_mae_ev"] > 1.0


def test_model_oracle_records_non_finite_predictions(qm9, local_model: str) -> None:
    oracle = build_oracle(f"model:{local_model}", data=qm9)
    assert oracle.name == f"model:{local_model}"
    # Methane (5 atoms) gets -20 eV, dimethyl ether (9 atoms) a NaN from the stand-in model.
    result = oracle.label([1, 15])
    assert list(result.status) == ["ok", "non_finite"]
    assert result.value[0] == -20.0 and math.isnan(result.value[1])


def test_model_oracle_prediction_error_is_recorded(qm9, local_model: str) -> None:
    oracle = ModelOracle(qm9, local_model)

    class Broken:
        def predict(self, frame):
            raise RuntimeError("out of memory")

    oracle._model = Broken()
    result = oracle.label([1, UNKNOWN])
    assert list(result.status) == ["error:RuntimeError", "unknown_molecule"]


def test_a_failing_batch_marks_only_its_rows(qm9, local_model: str) -> None:
    oracle = ModelOracle(qm9, local_model, batch_size=2)

    class FailsOnWater:  # a batch holding water (the only O here) fails, the others label
        def predict(self, frame):
            if any(8 in list(z) for z in frame["z"]):
                raise RuntimeError("boom")
            n = np.array([len(z) for z in frame["z"]])
            return {"mean_ev": -4.0 * n if len(n) > 1 else [1.0, 2.0]}

    oracle._model = FailsOnWater()
    result = oracle.label([1, 2, 3, 4, 5])  # batches [1, 2], [3, 4], [5] (wrong shape)
    errors = ["error:RuntimeError"] * 2 + ["error:ValueError"]
    assert list(result.status) == ["ok", "ok", *errors]
    assert list(result.value[:2]) == [-20.0, -16.0] and np.isnan(result.value[2:]).all()


def test_model_oracle_bad_uri_fails_at_label_time(qm9, tmp_path: Path) -> None:
    oracle = build_oracle(f"model:{tmp_path / 'nothing-here'}", data=qm9)  # lazy: builds fine
    with pytest.raises(OracleError, match=r"cannot load the oracle model .*nothing-here"):
        oracle.label([1])


def test_build_oracle_errors(qm9) -> None:
    with pytest.raises(ValueError, match=r"dft, xtb, model:<MLflow model URI>") as err:
        build_oracle("b3lyp", data=qm9)
    for choice in oracle_choices():
        assert choice in str(err.value)
    with pytest.raises(ValueError, match=r"needs an argument: model:<MLflow model URI>"):
        build_oracle("model", data=qm9)
    with pytest.raises(ValueError, match="needs an argument"):
        build_oracle("model:  ", data=qm9)
    with pytest.raises(ValueError, match="takes no argument"):
        build_oracle("dft:fast", data=qm9)
    with pytest.raises(ValueError, match="cost per label"):
        build_oracle("dft", data=qm9, cost=-1.0)
    oracle = build_oracle("dft", data=qm9)
    assert build_oracle(oracle, data=qm9) is oracle
    with pytest.raises(ValueError, match="instance"):
        build_oracle(oracle, data=qm9, cost=1.0)


def test_label_result_checks_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        LabelResult(np.arange(2), np.zeros(1), np.array(["ok"] * 2), np.zeros(2), "dft")


@pytest.mark.slow
def test_model_oracle_on_a_logged_model(tracking: str, qm9) -> None:
    from al.entrypoints.train import TrainRunConfig, run_train
    from al.tracking import TAG_MODEL_URI

    run_id = run_train(
        TrainRunConfig(
            train_size=60, epochs=1, batch_size=16, hidden=32, filter_groups=8,
            n_interactions=1, n_test=50, progress=False, experiment_name="oracle-tests",
        )
    )  # fmt: skip
    uri = mlflow.get_run(run_id).data.tags[TAG_MODEL_URI]
    oracle = build_oracle(f"model:{uri}", data=qm9)
    result = oracle.label([*SMALL, UNKNOWN])
    assert list(result.status) == ["ok"] * len(SMALL) + ["unknown_molecule"]
    assert np.isfinite(result.value[:-1]).all()
    assert result.total_cost == pytest.approx(len(SMALL) * 0.001)
    assert oracle.describe()["uri"] == uri
