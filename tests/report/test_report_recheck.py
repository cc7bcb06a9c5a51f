"""A report a referee can recheck: campaigns with converged checkpoints and test prediction
tables logged to a real MLflow store (SQLite, local artifacts), compared by ``run_compare``;
every paired interval and p-value of the report is rebuilt from ``tables/per_seed.csv``
alone with scipy, and the bootstrap from the runs' prediction tables."""

from __future__ import annotations

import html
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from scipy import stats as sps

from al.entrypoints.compare import CompareResult, run_compare
from al.plots import arm_colours
from al.report import build, display, read
from al.report import stats as rstats
from al.tracking import PREDICTION_COLUMNS, Artifacts, converged_predictions_path
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key

GRID = "conv"
SEEDS = (0, 1, 2, 3)
STEPS = (100, 150, 200, 250, 300)
CHECKPOINTS = (200, 300)
N_TEST = 200
#: error scale of each arm (relative to random) and its predicted std (relative to the
#: true one; None: no uncertainty)
ARMS: dict[str, tuple[float, float | None]] = {
    "random": (1.0, 1.0),
    "lcmd": (0.8, 1.0),
    "max_std": (0.97, 0.5),
    "coreset": (1.15, None),
}
QM9 = np.sort(np.random.default_rng(11).choice(130_000, N_TEST, replace=False))
TARGET = np.random.default_rng(12).normal(-70.0, 10.0, N_TEST)
#: per-molecule difficulty, shared by every run: the arms see the same hard molecules
HARD = np.random.default_rng(13).lognormal(0.0, 0.5, N_TEST)


def predictions(arm: str, seed: int, n: int) -> pd.DataFrame:
    """A test prediction table (:data:`PREDICTION_COLUMNS`): Gaussian errors of std
    ``0.1 scale (n/100)^-1/2 (1 + seed/20) HARD``, mostly shared by the arms of a seed;
    the predicted std is that times the arm's factor (empty without one); ``std_raw`` is
    ``std / 1.3``."""
    scale, factor = ARMS[arm]
    k = list(ARMS).index(arm)
    sigma = 0.1 * scale * (n / 100) ** -0.5 * (1 + 0.05 * seed) * HARD
    # the arms of a seed share most of their noise (the same test molecules are hard)
    common = np.random.default_rng([seed, n]).standard_normal(N_TEST)
    own = np.random.default_rng([k, seed, n]).standard_normal(N_TEST)
    err = sigma * (0.95 * common + math.sqrt(1 - 0.95**2) * own)
    std = sigma * factor if factor is not None else np.full(N_TEST, np.nan)
    return pd.DataFrame(
        dict(qm9_index=QM9, target=TARGET, mean=TARGET - err, std=std, std_raw=std / 1.3)
    )[list(PREDICTION_COLUMNS)]


def errors_of(table: pd.DataFrame) -> dict[str, float]:
    """The converged test errors of a prediction table (what the loop logs)."""
    e = np.abs(table["target"] - table["mean"]).to_numpy()
    return {
        CM.TEST_MAE: float(e.mean()),
        CM.TEST_RMSE: float(np.sqrt(np.mean(e**2))),
        CM.TEST_P95_AE: float(np.quantile(e, 0.95)),
        CM.TEST_P99_AE: float(np.quantile(e, 0.99)),
        CM.TEST_MAX_AE: float(e.max()),
    }


def log_campaign(
    client: MlflowClient,
    exp_id: str,
    arm: str,
    seed: int,
    folder: Path,
    converged: bool = True,
    rounds: bool = False,
) -> str:
    """A finished campaign run as the loop logs it: warm-chain metrics per round, validation
    and prior costs, and (``converged``) the converged checkpoints' metrics and prediction
    tables; with ``rounds``, round child runs whose last one has ``predictions/test.csv``."""
    tags = {"al.kind": "campaign", "al.strategy": arm, "al.oracle": "dft", "al.seed": str(seed),
            "al.cell": arm, "al.grid": GRID, "al.uncertainty": "ensemble"}  # fmt: skip
    run_id = client.create_run(exp_id, tags=tags, run_name=f"{arm}-s{seed}").info.run_id
    ts = int(time.time() * 1000)
    scale = ARMS[arm][0]
    metrics = []
    for r, n in enumerate(STEPS):
        warm = 0.09 * scale * (n / 100) ** -0.5 * (1 + 0.05 * seed) + 0.002 * ((seed * 7 + r) % 3)
        vals = {
            CM.TEST_MAE: warm, CM.TEST_RMSE: 1.3 * warm, CM.N_LABELLED: n, CM.ROUND: r,
            CM.COST_SPENT: n + 50.0, CM.COST_VALIDATION: 50.0, CM.N_VALIDATION: 50,
            CM.COST_PRIOR: 1000.0, CM.N_PRIOR_LABELS: 1000, CM.COST_TOTAL: n + 1050.0,
            CM.VAL_MAE: 1.1 * warm,
        }  # fmt: skip
        metrics += [Metric(k, float(v), ts, n) for k, v in vals.items()]
    if converged:
        for n in CHECKPOINTS:
            table = predictions(arm, seed, n)
            vals = {**errors_of(table), CM.STD_SCALE: 1.3, CM.FIT_STEPS: 500 + n}
            metrics += [Metric(CM.converged(k), float(v), ts, n) for k, v in vals.items()]
            path = folder / f"{run_id}_{n}" / Path(converged_predictions_path(n)).name
            path.parent.mkdir()
            table.to_csv(path, index=False)
            client.log_artifact(run_id, str(path), str(Path(converged_predictions_path(n)).parent))
    client.log_batch(run_id, metrics=metrics, synchronous=True)
    if rounds:
        for r in (len(STEPS) - 2, len(STEPS) - 1):
            child = client.create_run(
                exp_id,
                tags={"al.kind": "round", "al.round": str(r), "mlflow.parentRunId": run_id},
            ).info.run_id
            table = predictions(arm, seed, STEPS[r])
            path = folder / child / Path(Artifacts.PREDICTIONS).name
            path.parent.mkdir()
            table.to_csv(path, index=False)
            client.log_artifact(child, str(path), str(Path(Artifacts.PREDICTIONS).parent))
            client.set_terminated(child, "FINISHED")
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowClient, Path]]:
    """A SQLite tracking store with local artifacts, the tracking URI of this module."""
    import mlflow

    root = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(var, raising=False)
        old = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            yield MlflowClient(uri), root
        finally:
            mlflow.set_tracking_uri(old)


def experiment(client: MlflowClient, root: Path, **kw: bool) -> str:
    name = f"report-{uuid.uuid4().hex[:8]}"
    exp_id = client.create_experiment(name, artifact_location=str(root / name))
    folder = root / f"{name}-tables"
    folder.mkdir()
    for arm in ARMS:
        for seed in SEEDS:
            log_campaign(client, exp_id, arm, seed, folder, **kw)
    return name


@pytest.fixture(scope="module")
def converged(store: tuple[MlflowClient, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[
    CompareResult, Path
]:  # fmt: skip
    """One report of campaigns with converged checkpoints."""
    client, root = store
    name = experiment(client, root)
    out = tmp_path_factory.mktemp("converged-report")
    return run_compare(name, output_dir=out, log=False, echo=lambda _: None), out


def holm_by_hand(p: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, written out independently of the report."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def paired_values(per_seed: pd.DataFrame, arm: str, ref: str, metric: str, step: float):
    """Per seed both arms have, ``(arm value, reference value)`` of ``metric`` at ``step``."""
    at = per_seed[(per_seed["step"] == step)].dropna(subset=[metric])
    a = at[at["arm"] == arm].set_index("seed")[metric]
    b = at[at["arm"] == ref].set_index("seed")[metric]
    seeds = sorted(set(a.index) & set(b.index))
    return a[seeds].to_numpy(float), b[seeds].to_numpy(float)


def test_per_seed_csv_rebuilds_every_paired_interval_and_p_value(
    converged: tuple[CompareResult, Path],
) -> None:
    result, out = converged
    per_seed = pd.read_csv(out / "tables" / "per_seed.csv")
    assert list(per_seed.columns[:5]) == ["run_id", "arm", "grid", "seed", "step"]
    for col in (*rstats.CONVERGED_ERRORS, CM.COST_PRIOR, CM.COST_TOTAL, CM.COST_VALIDATION,
                CM.N_VALIDATION, CM.COST_SPENT, CM.converged(CM.FIT_STEPS)):  # fmt: skip
        assert col in per_seed and per_seed[col].notna().any(), col
    assert per_seed["run_id"].nunique() == len(ARMS) * len(SEEDS)

    # the primary endpoint: converged MAE at each checkpoint, every arm against random
    conv = pd.read_csv(out / "tables" / f"converged_paired_{GRID}.csv")
    primary = conv[conv["metric"] == CM.converged(CM.TEST_MAE)].reset_index(drop=True)
    assert sorted(set(zip(primary["arm"], primary["step"], strict=True))) == [
        (a, float(n)) for a in ("coreset", "lcmd", "max_std") for n in CHECKPOINTS
    ]
    for r in conv.itertuples():
        a, b = paired_values(per_seed, r.arm, r.baseline, r.metric, r.step)
        d = a - b
        test = sps.ttest_1samp(d, 0.0)
        lo, hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
        assert r.n_pairs == len(d) == len(SEEDS)
        assert (r.mean, r.lo, r.hi) == pytest.approx((d.mean(), lo, hi), rel=1e-9, abs=1e-12)
        assert r.p == pytest.approx(test.pvalue, rel=1e-9)
        rel = a / b - 1
        rlo, rhi = sps.t.interval(0.95, len(rel) - 1, loc=rel.mean(), scale=sps.sem(rel))
        assert (r.rel, r.rel_lo, r.rel_hi) == pytest.approx((rel.mean(), rlo, rhi), rel=1e-9)
    # Holm over the 6 primary comparisons; the verdict reads the adjusted p-value
    want = holm_by_hand(list(primary["p"]))
    assert primary["p_holm"].to_numpy() == pytest.approx(want, rel=1e-12)
    assert (primary["p_holm"] >= primary["p"]).all() and (primary["p_holm"] > primary["p"]).any()
    for r in primary.itertuples():
        expect = rstats.NO_DIFFERENCE
        if r.p_holm < 0.05:
            expect = rstats.BETTER if r.mean < 0 else rstats.WORSE
        assert r.verdict == expect
    lcmd = primary[primary["arm"] == "lcmd"]
    assert (lcmd["verdict"] == rstats.BETTER).all()  # 20 % lower errors in every seed
    # secondary rows: no adjustment
    assert conv.loc[conv["metric"] != CM.converged(CM.TEST_MAE), "p_holm"].isna().all()

    # the warm chain's final MAE: paired at the last common step, unadjusted p
    paired = pd.read_csv(out / "tables" / f"paired_{GRID}.csv")
    for r in paired.itertuples():
        a, b = paired_values(per_seed, r.arm, r.baseline, CM.TEST_MAE, r.final_step)
        d = a - b
        lo, hi = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
        assert (r.final_diff, r.final_diff_lo, r.final_diff_hi) == pytest.approx((d.mean(), lo, hi))
        assert r.final_p == pytest.approx(sps.ttest_1samp(d, 0.0).pvalue, rel=1e-9)

    # the report shows those numbers: "mean ± half-width", p and adjusted p, per row
    md = result.markdown.read_text()
    for r in primary.itertuples():
        cells = (f"{r.mean:+.4f} ± {(r.hi - r.lo) / 2:.4f}", f"{r.p:.2g}", f"{r.p_holm:.2g}")
        row = f"| {r.arm} | random | {r.step:.0f} | {r.n_pairs} | {cells[0]} |"
        line = next(ln for ln in md.splitlines() if ln.startswith(row))
        assert f"| {cells[1]} | {cells[2]} |" in line and f"| {r.verdict} |" in line


def test_bootstrap_is_rebuilt_from_the_prediction_tables(
    converged: tuple[CompareResult, Path],
) -> None:
    """The bootstrap of every primary comparison, redone here by a plain loop over the
    documented draws (pairs, then molecules) from the runs' converged prediction tables."""
    import mlflow

    result, out = converged
    conv = pd.read_csv(out / "tables" / f"converged_paired_{GRID}.csv")
    primary = conv[conv["metric"] == CM.converged(CM.TEST_MAE)]
    runs = result.report.runs.set_index(["arm", "seed"])["run_id"]
    B = int(result.report.n_resamples)
    assert B == 2000 and (primary["boot_n_resamples"] == B).all()
    for r in primary[primary["arm"].isin(["lcmd", "max_std"])].itertuples():
        tables = {}
        for arm in (r.arm, r.baseline):
            for s in SEEDS:
                local = mlflow.artifacts.download_artifacts(
                    run_id=runs[(arm, str(s))],
                    artifact_path=converged_predictions_path(int(r.step)),
                )
                tables[arm, s] = pd.read_csv(local).sort_values("qm9_index")
        abs_a = np.vstack([np.abs(tables[r.arm, s]["target"] - tables[r.arm, s]["mean"])
                           for s in SEEDS])  # fmt: skip
        abs_b = np.vstack([np.abs(tables[r.baseline, s]["target"] - tables[r.baseline, s]["mean"])
                           for s in SEEDS])  # fmt: skip
        S, M = abs_a.shape
        assert abs_a.shape == (len(SEEDS), N_TEST) and r.boot_n_molecules == N_TEST
        # the point estimate is the t-test's mean difference (the logged MAE is the table's)
        assert r.boot_mean == pytest.approx((abs_a - abs_b).mean(axis=1).mean(), rel=1e-9)
        assert r.boot_mean == pytest.approx(r.mean, rel=1e-9)
        rng = np.random.default_rng(result.report.bootstrap_seed)
        pairs = rng.integers(0, S, size=(B, S))
        diff, base = np.empty(B), np.empty(B)
        for b in range(B):
            mols = rng.integers(0, M, size=(S, M))
            da = [
                abs_a[p, mols[j]].mean() - abs_b[p, mols[j]].mean() for j, p in enumerate(pairs[b])
            ]
            diff[b] = np.mean(da)
            base[b] = np.mean([abs_b[p, mols[j]].mean() for j, p in enumerate(pairs[b])])
        lo, hi = np.quantile(diff, [0.025, 0.975])
        assert (r.boot_lo, r.boot_hi) == pytest.approx((lo, hi), rel=1e-9)
        rlo, rhi = np.quantile(diff / base, [0.025, 0.975])
        assert (r.boot_rel_lo, r.boot_rel_hi) == pytest.approx((rlo, rhi), rel=1e-9)
    md = result.markdown.read_text()
    row = primary[primary["arm"] == "lcmd"].iloc[0]
    assert f"[{row.boot_lo:+.4f}, {row.boot_hi:+.4f}]" in md


def test_converged_sections_warm_chain_labels_and_uncertainty(
    converged: tuple[CompareResult, Path],
) -> None:
    result, out = converged
    md, page = result.markdown.read_text(), result.html.read_text()
    heads = re.findall(r"^#{1,3} (.*)$", md, re.M)
    first = heads.index(f"Grid: {GRID}") + 1
    assert heads[first].startswith("Converged checkpoints: the labelled set refitted")
    assert heads[first + 1].startswith("Primary endpoint: converged test MAE against random")
    assert heads[first + 2].startswith("Other converged errors against random")
    assert heads[first + 3].startswith("Uncertainty on the test set (converged predictions")
    warm = [h for h in heads if h.endswith("what the campaign saw (warm chain)")]
    assert [h.split(" (")[0].split(" —")[0] for h in warm][:2] == [
        "Summary",
        "Final model on the test set",
    ]
    assert len(warm) >= 5 and "what the campaign saw (warm chain)" in page
    # the two renderings say the same numbers
    number = re.compile(r"[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?%?")
    body = html.unescape(re.sub(r"<[^>]+>", " ", page.split("<body>", 1)[1]))
    md_text = re.sub(r"!\[([^]]*)\]\([^)]*\)", r"\1", md).replace("\\|", "|")
    assert Counter(number.findall(md_text)) == Counter(number.findall(body))
    assert "**±:** mean ± half-width of the two-sided 95% Student-t interval" in md
    assert "**Primary endpoint:** converged test MAE at each checkpoint" in md
    assert "6 comparison(s)" in md
    # validation, prior and total costs reach the summary
    assert "| total cost incl. prior |" in md and "| prior labels' cost (not in cost) |" in md
    # no "[lo, hi]" but a bootstrap interval: every other interval is "±"
    for line in md.splitlines():
        if line.startswith("|") and re.search(r"\[[-+]?[\d.]+%?, [-+]?[\d.]+%?\]", line):
            assert "resamples" in line, line

    # uncertainty: calibrated arms have sd(z) ~ 1, the over-confident one ~ 2, none for coreset
    cal = result.report.grids[0].calibration.set_index(["arm", "step"])
    for n in CHECKPOINTS:
        assert cal.loc[("random", n), "sd_z"] == pytest.approx(1.0, abs=0.1)
        assert cal.loc[("max_std", n), "sd_z"] == pytest.approx(2.0, abs=0.2)
        assert cal.loc[("max_std", n), "coverage_95"] < 0.75 < cal.loc[("random", n), "coverage_95"]
        assert not cal.loc[("coreset", n), "has_std"]
    assert "no predicted std" in md
    plots = sorted(p.name for p in (out / "plots").iterdir())
    for n in CHECKPOINTS:
        assert f"reliability_{GRID}_converged_{n}.png" in plots
        assert f"z_scores_{GRID}_converged_{n}.png" in plots
    assert "a calibrated model lies on the dashed y = x line" in md
    rel = pd.read_csv(out / "tables" / f"reliability_{GRID}.csv")
    assert set(rel["arm"]) == {"random", "lcmd", "max_std"}
    assert (rel.groupby(["arm", "step"])["n"].sum() == len(SEEDS) * N_TEST).all()

    # one colour per arm in every figure: lcmd's colour is in the curves, the paired
    # differences (where the arms are fewer) and the reliability diagram
    colour = np.array(matplotlib.colors.to_rgb(arm_colours(ARMS)["lcmd"]))
    for name in (f"mae_vs_labels_{GRID}.png", f"paired_diff_{GRID}.png",
                 f"reliability_{GRID}_converged_200.png"):  # fmt: skip
        img = matplotlib.image.imread(out / "plots" / name)[..., :3]
        assert (np.abs(img - colour).max(axis=-1) < 0.02).sum() > 20, name
    other = np.array(matplotlib.colors.to_rgb(arm_colours(ARMS)["random"]))
    img = matplotlib.image.imread(out / "plots" / f"paired_diff_{GRID}.png")[..., :3]
    assert (np.abs(img - other).max(axis=-1) < 0.02).sum() < 5  # random is no difference line


def test_without_converged_checkpoints_the_final_mae_is_primary(
    store: tuple[MlflowClient, Path], tmp_path: Path
) -> None:
    """No converged metrics: no converged section, Holm over the final MAE comparisons,
    and the uncertainty read from each run's final round child run."""
    client, root = store
    name = experiment(client, root, converged=False, rounds=True)
    result = run_compare(name, output_dir=tmp_path, log=False, echo=lambda _: None)
    md = result.markdown.read_text()
    assert "Converged checkpoints" not in md and "warm chain" not in md
    assert "**Primary endpoint:** final test MAE, arm − reference arm; 3 comparison(s)" in md
    paired = pd.read_csv(tmp_path / "tables" / f"paired_{GRID}.csv")
    assert paired["final_p_holm"].to_numpy() == pytest.approx(holm_by_hand(list(paired["final_p"])))
    per_seed = pd.read_csv(tmp_path / "tables" / "per_seed.csv")
    assert per_seed[list(rstats.CONVERGED_ERRORS)].isna().all().all()
    assert "| verdict (final MAE, Holm) |" in md
    cal = result.report.grids[0].calibration
    assert set(cal["source"]) == {read.SOURCE_FINAL_ROUND}
    assert set(cal["step"]) == {float(STEPS[-1])}  # the last round's child, at its step
    assert "final round predictions, pooled over seeds" in md
    assert not (tmp_path / "tables" / f"converged_paired_{GRID}.csv").exists()
    assert math.isfinite(cal.set_index("arm").loc["random", "sd_z"])
    assert any(f"final round's predictions of {len(ARMS) * len(SEEDS)} run(s)" in n
               for n in result.report.notes)  # fmt: skip


def test_missing_prediction_tables_skip_the_bootstrap_with_a_note() -> None:
    """Converged metrics without prediction tables: the t-based comparison stands, the
    bootstrap says why it is missing (pure build, no store)."""
    rows = []
    for arm, scale in (("random", 1.0), ("lcmd", 0.8)):
        for seed in SEEDS:
            for n in CHECKPOINTS:
                row = dict(run_id=f"{arm}-{seed}", arm=arm, grid="", seed=str(seed), step=float(n))
                row.update({m: np.nan for m in read.REPORT_METRICS})
                row[CM.TEST_MAE] = scale * n**-0.5 + 0.001 * seed
                row[CM.COST_SPENT] = n
                row[CM.converged(CM.TEST_MAE)] = 0.9 * scale * n**-0.5 + 0.001 * seed * (n / 100)
                rows.append(row)
    hist = pd.DataFrame(rows)
    runs = hist.drop_duplicates("run_id")[list(read.KEY_COLUMNS)].reset_index(drop=True)
    runs = runs.assign(strategy=runs["arm"], oracle="dft", cell=runs["arm"], start_time=0,
                       run_name="", uncertainty="ensemble", acquisition=runs["arm"],
                       batch_size="50", baseline="none",
                       evaluated_on="test set")[list(read.RUN_COLUMNS)]  # fmt: skip
    report = build.build_report(runs, hist)
    g = report.grids[0]
    primary = g.converged_paired[g.converged_paired["metric"] == CM.converged(CM.TEST_MAE)]
    assert len(primary) == 2 and primary["boot_lo"].isna().all()
    assert primary["p_holm"].notna().all() and report.n_primary == 2
    assert sum("bootstrap of lcmd vs random" in n and "missing" in n for n in g.notes) == 2
    shown = display.converged_paired_display(g.converged_paired)
    assert (shown["bootstrap Δ MAE (eV) [95%]"] == "–").all()
