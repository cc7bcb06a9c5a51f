"""The comparison report: statistics on synthetic histories with known answers, the
Markdown and HTML renderings of one report, and the ``al compare`` command end to end
against a real tracking server."""

from __future__ import annotations

import html
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from al.cli import main
from al.report import build, display, paired, read, render, server, stats
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key

MAE = CM.TEST_MAE
STEPS = list(range(100, 1001, 50))


def histories(
    arms: dict[str, Callable[[np.ndarray, int], np.ndarray]],
    seeds: tuple[int, ...] = (0, 1, 2),
    steps: list[int] | None = None,
    grid: str = "",
    extra: dict[str, float] | None = None,
) -> pd.DataFrame:
    """A *histories* frame: ``arms[arm](n, seed)`` gives test MAE at labels ``n``;
    cost = labels; other metrics constant (``extra``)."""
    rows = []
    for arm, fn in arms.items():
        for seed in seeds:
            n = np.asarray(steps or STEPS, dtype=float)
            for step, y in zip(n, fn(n, seed), strict=True):
                row = dict(run_id=f"{arm}-{seed}", arm=arm, grid=grid, seed=str(seed), step=step)
                row.update({m: np.nan for m in read.REPORT_METRICS})
                row.update({MAE: float(y), CM.COST_SPENT: step, CM.N_LABELLED: step})
                row.update(extra or {})
                rows.append(row)
    return pd.DataFrame(rows)


def runs_of(
    hist: pd.DataFrame,
    strategy: dict[str, str] | None = None,
    baseline: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The *runs* frame that goes with :func:`histories` (``baseline``: arm -> Δ baseline)."""
    r = hist.drop_duplicates("run_id")[list(read.KEY_COLUMNS)].reset_index(drop=True)
    r["strategy"] = r["arm"].map(lambda a: (strategy or {}).get(a, a))
    r["oracle"], r["cell"], r["start_time"], r["run_name"] = "dft", r["arm"], 0, ""
    r["uncertainty"], r["acquisition"], r["batch_size"] = "ensemble", r["strategy"], "50"
    r["baseline"] = r["arm"].map(lambda a: (baseline or {}).get(a, "none"))
    r["evaluated_on"] = "test set"
    return r[list(read.RUN_COLUMNS)]


# --- statistics ---------------------------------------------------------------------------
def test_t_interval_known_values() -> None:
    ci = stats.mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == 2.0 and ci.n == 3
    assert ci.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    # 97.5 % quantiles of Student's t (two-sided 95 %), from printed tables, and the normal limit
    known = {1: 12.706205, 2: 4.302653, 5: 2.570582, 10: 2.228139, 30: 2.042272, 120: 1.979930}
    for df, q in known.items():
        assert stats.t_quantile(df) == pytest.approx(q, rel=1e-6)
    assert stats.t_quantile(10**7) == pytest.approx(1.959964, rel=1e-6)
    assert stats.t_quantile(5, 0.9) == pytest.approx(2.015048, rel=1e-6)
    assert math.isnan(stats.t_quantile(0))
    one = stats.mean_ci([0.5, float("nan")])
    assert one.mean == 0.5 and one.n == 1 and math.isnan(one.lo)


def test_label_savings_of_a_20_percent_lower_power_law() -> None:
    """Baseline MAE = a n^-1/2, arm 20 % lower: the arm reaches m at n_arm = 0.64 n_base,
    so it saves 36 % of the labels for any target both reach."""
    a = 10.0
    hist = histories(
        {"random": lambda n, s: a * n**-0.5, "ensemble": lambda n, s: 0.8 * a * n**-0.5}
    )
    curves = stats.learning_curves(hist)
    targets = [a / math.sqrt(900), a / math.sqrt(700), a / math.sqrt(400)]
    sav = paired.label_savings(curves, "ensemble", "random", targets)
    assert sav["n_baseline"].to_numpy() == pytest.approx([900, 700, 400], rel=1e-9)
    assert sav["n_arm"].to_numpy() == pytest.approx([576, 448, 256], rel=0.01)
    assert sav["savings"].to_numpy() == pytest.approx([0.36] * 3, abs=0.006)
    # a target the baseline never reaches (but the arm does) is reported, not invented
    low = paired.label_savings(curves, "ensemble", "random", [0.8 * a / math.sqrt(1000) * 1.01])
    assert math.isnan(low["n_baseline"][0]) and "baseline not reached" in low["note"][0]
    # a target the arm meets from its first step gives a bound, and says so
    high = paired.label_savings(curves, "ensemble", "random", [a / math.sqrt(150)])
    assert high["n_arm"][0] == 100 and high["savings"][0] == pytest.approx(1 / 3)
    assert "first step: savings ≥ 33%" in high["note"][0]


def test_labels_to_reach_interpolates_log_mae() -> None:
    x = [100, 200, 300]
    y = [1.0, math.exp(-1), math.exp(-2)]  # log-linear in x: the crossing is exact
    assert stats.labels_to_reach(x, y, math.exp(-1.5)) == pytest.approx(250)
    assert stats.labels_to_reach(x, y, 2.0) == 100  # already reached at the first step
    assert math.isnan(stats.labels_to_reach(x, y, 0.01))


def test_identical_seeds_give_a_zero_width_band() -> None:
    hist = histories({"random": lambda n, s: 3 * n**-0.4})
    for x in ("step", CM.COST_SPENT):
        curves = stats.learning_curves(hist, x)
        assert len(curves) and (curves["n_seeds"] == 3).all()
        assert np.allclose(curves["hi"] - curves["lo"], 0)
        assert np.allclose(curves["mean"], curves["lo"])


def test_cost_curves_interpolate_seeds_with_different_costs() -> None:
    """MAE = 2 c^-1/2 sampled at different costs per seed: log-log interpolation is exact."""
    rows = []
    for seed, c in enumerate((np.array([90.0, 400, 1000]), np.array([100.0, 700, 1300]))):
        for ci in c:
            rows.append(dict(run_id=f"r{seed}", arm="a", grid="", seed=str(seed), step=ci,
                             **{MAE: 2 * ci**-0.5, CM.COST_SPENT: ci}))  # fmt: skip
    curves = stats.learning_curves(pd.DataFrame(rows), CM.COST_SPENT)
    assert curves["x"].min() == pytest.approx(100) and curves["x"].max() == pytest.approx(1000)
    assert curves["mean"].to_numpy() == pytest.approx(2 * curves["x"].to_numpy() ** -0.5)


def test_auc_of_a_constant_curve_is_the_constant() -> None:
    assert stats.curve_auc([100, 300, 1000], [0.7, 0.7, 0.7], 150, 900) == pytest.approx(0.7)
    assert stats.curve_auc([0, 10], [0, 10], 0, 10) == pytest.approx(5.0)
    assert stats.curve_auc([0, 10], [0, 10], 4, 4) == pytest.approx(4.0)
    assert math.isnan(stats.curve_auc([100, 200], [1, 1], 50, 200))  # not covered
    hist = histories({"flat": lambda n, s: np.full_like(n, 0.25 + s)})
    aucs = stats.run_aucs(hist, 100, 1000)
    assert aucs.to_dict() == pytest.approx({"flat-0": 0.25, "flat-1": 1.25, "flat-2": 2.25})


@pytest.mark.parametrize(("offset", "expected"), [(-0.05, stats.BETTER), (0.05, stats.WORSE)])
def test_paired_constant_offset(offset: float, expected: str) -> None:
    def base(n: np.ndarray, s: int) -> np.ndarray:
        return (1 + 0.3 * s) * n**-0.3  # seeds differ a lot: only pairing sees the offset

    hist = histories({"random": base, "other": lambda n, s: base(n, s) + offset})
    d = paired.paired_differences(hist, "other", "random")
    assert d["step"].tolist() == STEPS
    assert d["mean"].to_numpy() == pytest.approx(offset)
    assert d["hi"].to_numpy() - d["lo"].to_numpy() == pytest.approx(0, abs=1e-12)
    assert (d["verdict"] == expected).all() and (d["n_pairs"] == 3).all()
    s = paired.paired_summary(hist, "other", "random")
    assert s["final_step"] == 1000 and s["final_diff"] == pytest.approx(offset)
    assert s["verdict"] == expected and s["verdict_auc"] == expected
    finals = np.array([base(np.array([1000.0]), k)[0] for k in range(3)])
    assert s["final_rel"] == pytest.approx(np.mean(offset / finals))


def test_paired_noise_and_too_few_seeds() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, size=3)
    hist = histories({"random": lambda n, s: 0.5 + 0 * n, "b": lambda n, s: 0.5 + noise[s] + 0 * n})
    assert paired.paired_summary(hist, "b", "random")["verdict"] == stats.NO_DIFFERENCE
    one = histories({"random": lambda n, s: 0.5 + 0 * n, "b": lambda n, s: 0.4 + 0 * n}, seeds=(7,))
    assert paired.paired_summary(one, "b", "random")["verdict"] == stats.TOO_FEW
    assert (paired.paired_differences(one, "b", "random")["verdict"] == stats.TOO_FEW).all()


def test_arms_baseline_and_summary() -> None:
    runs = pd.DataFrame(
        dict(run_id=list("abcd"), grid="", seed="0", cell=["", "", "", "ens_b50"],
             strategy=["random", "random", "ensemble", "ensemble"],
             oracle=["dft", "xtb", "dft", "dft"]))  # fmt: skip
    assert read.assign_arms(runs).tolist() == [
        "random/dft",
        "random/xtb",
        "ensemble/dft",
        "ens_b50",
    ]
    runs["arm"] = read.assign_arms(runs)
    assert build.resolve_baseline(runs, "random")[0] is None  # two random arms: ambiguous
    assert "ambiguous" in build.resolve_baseline(runs, "random")[1]
    assert build.resolve_baseline(runs, "ens_b50") == ("ens_b50", "")
    assert "no baseline arm" in build.resolve_baseline(runs, "coreset")[1]

    extra = {CM.TIME_FIT: 2.0, CM.TIME_SCORE: 0.5, CM.TEST_NLL: -1.0}
    hist = histories({"random": lambda n, s: 4 * n**-0.5, "ens": lambda n, s: 2 * n**-0.5},
                     extra=extra)  # fmt: skip
    curves = stats.learning_curves(hist)
    table = stats.summary_table(hist, curves, [0.2])
    row = table.set_index("arm").loc["ens"]
    assert row["n_runs"] == 3 and row["seeds"] == "0, 1, 2"
    assert row["final_mae"] == pytest.approx(2 / math.sqrt(1000))
    assert row["labels_to_0.2"] == pytest.approx(100)
    assert table.set_index("arm").loc["random", "labels_to_0.2"] == pytest.approx(400, rel=0.01)
    assert row["time_per_round_s"] == pytest.approx(2.5) and row["final_nll"] == -1.0
    assert math.isnan(row["final_spearman"])


def test_report_files_offline(tmp_path: Path) -> None:
    hist = histories({"random": lambda n, s: (1 + 0.1 * s) * n**-0.5,
                      "ensemble": lambda n, s: 0.8 * (1 + 0.1 * s) * n**-0.5})  # fmt: skip
    report = build.build_report(
        runs_of(hist), hist, experiment_name="synthetic", command="al compare"
    )
    g = report.grids[0]
    assert g.baseline == "random" and g.paired.iloc[0]["verdict"] == stats.BETTER
    # default targets: the baseline's final mean MAE (0.034785) and 1.25 x, rounded up
    assert g.targets == [0.0435, 0.0348]
    assert (g.summary.set_index("arm").loc["random", ["labels_to_0.0435", "labels_to_0.0348"]]
            .notna().all())  # fmt: skip
    md, page = render.write_report(report, tmp_path)
    text = md.read_text()
    assert "| ensemble |" in text and stats.BETTER in text and "36" in text
    assert "data:image/png;base64," in page.read_text()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "mae_vs_cost_all.png", "mae_vs_labels_all.png", "paired_diff_all.png",
    ]  # fmt: skip


def test_tables_render_escaped_in_both_formats() -> None:
    table = render.Table.of(pd.DataFrame({"a": ["x|y"], "b": [1], "c": [float("nan")]}))
    sections = [render.Section("T <&>", 2, table=table)]
    md = render.render_sections(sections, "doc", "md")
    assert md.splitlines() == [
        "## T <&>",
        "",
        "| a | b | c |",
        "|---|---|---|",
        "| x\\|y | 1 | – |",
    ]
    page = render.render_sections(sections, "doc <1>", "html")
    assert "<title>doc &lt;1&gt;</title>" in page and "<h2>T &lt;&amp;&gt;</h2>" in page
    assert "<tr><td>x|y</td><td>1</td><td>–</td></tr>" in page
    with pytest.raises(ValueError, match="unknown report format"):
        render.render_sections(sections, "doc", "rst")


_NUMBER = re.compile(r"[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?%?")


def test_markdown_and_html_say_the_same_things() -> None:
    """One synthetic report (two grids, notes, a figure): the two renderings have the same
    headings, in order, the same numbers (as many times each) and the same figures."""
    one = histories({"random": lambda n, s: (1 + 0.1 * s) * n**-0.5,
                     "ens|<b>": lambda n, s: 0.8 * (1 + 0.1 * s) * n**-0.5}, grid="g1")  # fmt: skip
    two = histories({"a": lambda n, s: n**-0.4, "b": lambda n, s: 0.9 * n**-0.4}, grid="g2",
                    seeds=(0,))  # fmt: skip
    hist = pd.concat([one, two], ignore_index=True)
    report = build.build_report(runs_of(hist), hist, experiment_name="syn & <co>",
                                command="al compare --experiment-name 'syn'")  # fmt: skip
    report.notes = ["1 run superseded", "note <2>"]
    fig = render.Figure("Test MAE vs labels", "plots/mae_vs_labels_g1.png", "iVBORw0KGgo=")
    sections = render.report_sections(report, {"g1": [fig]}, generated="2026-01-02 03:04 UTC",
                                      server="http://127.0.0.1:5000")  # fmt: skip
    md = render.render_sections(sections, report.title, "md")
    page = render.render_sections(sections, report.title, "html")

    md_heads = [(len(m[1]), m[2]) for m in re.finditer(r"^(#{1,3}) (.*)$", md, re.M)]
    html_heads = [
        (int(m[1]), html.unescape(m[2])) for m in re.finditer(r"<h(\d)>(.*?)</h\1>", page)
    ]
    assert md_heads == html_heads
    assert [h for _, h in md_heads][:4] == [report.title, "Runs per arm", "Grid: g1", "Summary"]
    assert {
        "Grid: g2",
        "Label savings against random of the same surrogate",
        "Plots",
        "Method",
    } <= {h for _, h in md_heads}

    body = html.unescape(re.sub(r"<[^>]+>", " ", page.split("<body>", 1)[1]))
    md_text = re.sub(r"!\[([^]]*)\]\([^)]*\)", r"\1", md).replace("\\|", "|")  # no file names
    md_numbers = Counter(_NUMBER.findall(md_text))
    assert len(md_numbers) > 40 and md_numbers == Counter(_NUMBER.findall(body))
    for text in ("ens|<b>", "note <2>", "syn & <co>", stats.BETTER, "no baseline arm 'random'"):
        assert text in md_text and text in body
    assert "![Test MAE vs labels](plots/mae_vs_labels_g1.png)" in md
    assert 'alt="Test MAE vs labels" src="data:image/png;base64,iVBORw0KGgo="' in page
    assert "<figcaption>Test MAE vs labels</figcaption>" in page


def test_run_ids_link_to_the_server_without_its_password_and_the_best_arm() -> None:
    hist = histories({"random": lambda n, s: (1 + 0.1 * s) * n**-0.5,
                      "ensemble": lambda n, s: 0.8 * (1 + 0.1 * s) * n**-0.5})  # fmt: skip
    report = build.build_report(runs_of(hist), hist, experiment_name="e", command="al compare")
    report.experiment_id = "7"
    sections = render.report_sections(report, server="https://me:s3cret@host:5000/mlflow/?x=1")
    page = render.render_sections(sections, report.title, "html")
    md = render.render_sections(sections, report.title, "md")
    link = '<a href="https://host:5000/mlflow/#/experiments/7/runs/ensemble-0">ensemble-0</a>'
    assert link in page and "href" not in md and "ensemble-0" in md
    assert "s3cret" not in page and "s3cret" not in md
    assert server.ui_base("sqlite:///mlflow.db") == "" and server.ui_base("./mlruns") == ""
    assert server.run_links(["r"], "7", "file:///tmp") == {}
    best = server.best_arm(report)
    assert best is not None and (best.arm, best.run_id) == ("ensemble", "ensemble-0")
    assert best.metric == "mean final test_mae over seeds"
    assert "not registered" in best.describe("best")


def _with_settings(runs: pd.DataFrame, settings: dict[str, dict[str, str]]) -> pd.DataFrame:
    """``runs`` with per-arm overrides of strategy, uncertainty, acquisition, batch size."""
    out = runs.copy()
    for arm, values in settings.items():
        for k, v in values.items():
            out.loc[out["arm"] == arm, k] = v
    return out


def test_each_arm_is_compared_with_random_of_its_own_surrogate(tmp_path: Path) -> None:
    def curve(scale: float) -> Callable[[np.ndarray, int], np.ndarray]:
        return lambda n, s: scale * (1 + 0.1 * s) * n**-0.5

    arms = {"random": curve(1.0), "max_std": curve(0.9), "mc_dropout": curve(1.2)}
    hist = histories(arms)
    mcd = {"strategy": "mc_dropout", "uncertainty": "mc_dropout", "acquisition": "max_std"}
    runs = _with_settings(runs_of(hist), {"max_std": {"strategy": "ensemble",
                                                      "acquisition": "max_std"},
                                          "mc_dropout": mcd})  # fmt: skip
    refs, notes = build.reference_arms(runs, "random")
    assert refs == {"max_std": "random", "mc_dropout": None, "random": None}
    assert len(notes) == 1 and notes[0].startswith("mc_dropout: no random arm with the same")
    report = build.build_report(runs, hist, experiment_name="strategies")
    g = report.grids[0]
    # mc_dropout is not compared with the random arm of the ensemble surrogate
    assert g.paired["arm"].tolist() == ["max_std"] and g.paired["baseline"].tolist() == ["random"]
    assert set(g.savings["arm"]) == {"max_std"} and set(g.paired_steps["arm"]) == {"max_std"}
    md, _ = render.write_report(report, tmp_path)
    assert "mc_dropout: no random arm with the same surrogate" in md.read_text()

    # a random arm of the MC-dropout surrogate is mc_dropout's reference (random by
    # acquisition, whatever the strategy tag); batch sizes must match too
    both = histories({**arms, "random_mcd": curve(1.3), "mc_b100": curve(1.1)})
    runs = _with_settings(runs_of(both), {
        "max_std": {"strategy": "ensemble", "acquisition": "max_std"}, "mc_dropout": mcd,
        "random_mcd": {"strategy": "mc_dropout", "uncertainty": "mc_dropout",
                       "acquisition": "random"},
        "mc_b100": {**mcd, "batch_size": "100"},
    })  # fmt: skip
    refs, notes = build.reference_arms(runs, "random")
    assert refs["mc_dropout"] == "random_mcd" and refs["max_std"] == "random"
    assert refs["mc_b100"] is None and "batch_size 100" in notes[0]
    g = build.build_report(runs, both).grids[0]
    paired = g.paired.set_index("arm")
    assert paired.loc["mc_dropout", "baseline"] == "random_mcd"
    assert paired.loc["mc_dropout", "final_diff"] < 0  # 1.2 vs 1.3: better than its own random
    assert paired.loc["mc_dropout", "verdict"] == stats.BETTER
    # --baseline naming one arm of another strategy is the reference of every arm, as asked
    refs, notes = build.reference_arms(runs, "random_mcd")
    assert not notes and refs["random"] == refs["max_std"] == "random_mcd"
    assert refs["random_mcd"] is None


def test_arm_prefix_pairs_every_arm_with_one_arm_whatever_its_settings(tmp_path: Path) -> None:
    """Batch sizes at an equal budget: arms of another batch size have no reference of
    their own; ``arm:NAME`` reads them against NAME, and the notes say what differs."""
    hist = histories({"lcmd": lambda n, s: n**-0.5, "lcmd_b250": lambda n, s: 0.9 * n**-0.5})
    runs = _with_settings(runs_of(hist), {
        "lcmd": {"strategy": "lcmd", "acquisition": "lcmd", "batch_size": "1000"},
        "lcmd_b250": {"strategy": "lcmd", "acquisition": "lcmd", "batch_size": "250"},
    })  # fmt: skip
    refs, _ = build.reference_arms(runs, "lcmd")
    assert refs == {"lcmd": None, "lcmd_b250": None}  # both are lcmd candidates
    refs, notes = build.reference_arms(runs, "arm:lcmd")
    assert refs == {"lcmd": None, "lcmd_b250": "lcmd"}
    assert notes == ["lcmd_b250 is read against lcmd with other settings: batch_size 250 vs 1000"]
    g = build.build_report(runs, hist, baseline="arm:lcmd").grids[0]
    assert g.baseline == "lcmd" and g.paired["arm"].tolist() == ["lcmd_b250"]
    assert g.paired.set_index("arm").loc["lcmd_b250", "verdict"] == stats.BETTER
    md, _ = render.write_report(build.build_report(runs, hist, baseline="arm:lcmd"), tmp_path)
    assert "Paired comparison with lcmd (arm − baseline" in md.read_text()
    refs, notes = build.reference_arms(runs, "arm:nope")
    assert set(refs.values()) == {None} and notes[0].startswith("no arm 'nope' in")


def test_degenerate_auc_range_and_one_seed_are_said_not_computed() -> None:
    """Multi-fidelity grid: dft_only ends at 200 labels, the multi-fidelity arm starts there
    (round 0 labels every initial molecule at both fidelities), one seed each."""
    one = dict(seeds=(0,), extra={CM.TEST_RMSE: 0.3})
    dft = histories({"dft_only": lambda n, s: n**-0.5}, steps=[100, 150, 200], **one)
    mf = histories({"mf_vr": lambda n, s: 0.9 * n**-0.5}, steps=[200, 250, 300], **one)
    hist = pd.concat([dft, mf], ignore_index=True)
    assert stats.common_range(hist) == (200, 200)
    assert "only one label count (200 labels)" in stats.auc_range_note(hist, 200, 200)
    assert stats.auc_range_note(hist, 100, 200) == ""
    runs = _with_settings(runs_of(hist), {"dft_only": {"strategy": "ensemble"}})
    report = build.build_report(runs, hist, baseline="dft_only")
    g = report.grids[0]
    assert g.summary["auc"].isna().all() and g.summary["auc_note"].str.startswith("no AUC").all()
    row = g.paired.iloc[0]
    assert row["arm"] == "mf_vr" and math.isnan(row["auc_rel"]) and row["n_pairs"] == 1
    assert row["verdict_auc"].startswith("no AUC")
    sections = render.report_sections(report, generated="now", server="here")
    md = render.render_sections(sections, report.title, "md")
    assert "200–200" not in md and "no AUC: the curves share only one label count" in md
    paired = display.paired_display(g.paired).iloc[0]
    assert paired["Δ final MAE (eV, ± CI)"].endswith(f"± {stats.ONE_SEED}")
    assert paired["relative Δ final MAE (± CI)"].endswith(f"± {stats.ONE_SEED}")
    assert paired["relative Δ AUC (± CI)"].startswith("no AUC")
    assert paired["p (final MAE)"] == "–" and paired["verdict (final MAE, Holm)"] == stats.TOO_FEW
    summary = display.summary_display(g.summary, g.targets, 0.95)
    assert summary.iloc[0]["final MAE (eV, ± CI)"].endswith(f"± {stats.ONE_SEED}")
    final = display.paired_final_display(g.paired).iloc[0]
    assert final["Δ RMSE (eV) (± CI)"] == f"+0.0000 ± {stats.ONE_SEED}"
    assert all(stats.ONE_SEED in c or c == "–" for c in final.iloc[3:])
    # a zero half-width is never printed for a single seed
    assert not re.search(r"± 0(\.0+)?%?( |$)", md)


def test_final_model_errors_labels_to_random_and_cost_per_fidelity() -> None:
    a = 10.0
    hist = histories({"random": lambda n, s: a * n**-0.5, "ens": lambda n, s: 0.8 * a * n**-0.5,
                      "bad": lambda n, s: 1.2 * a * n**-0.5})  # fmt: skip
    seed = hist["seed"].astype(float)
    scale = hist["arm"].map({"random": 1.0, "ens": 0.8, "bad": 1.2})
    for m, k in ((CM.TEST_RMSE, 1.5), (CM.TEST_P95_AE, 3.0), (CM.TEST_P99_AE, 5.0),
                 (CM.TEST_MAX_AE, 9.0)):  # fmt: skip
        hist[m] = k * hist[MAE] + 0.01 * seed  # seeds differ: a real CI
    hist[CM.TEST_NLL] = -scale - 0.1 * seed
    hist[CM.TEST_SPEARMAN] = 0.2 + 0.0 * seed
    hist[CM.TEST_MISCALIBRATION] = 0.05 * scale
    hist[CM.labels_from("xtb")] = 2 * hist["step"]
    hist[CM.labels_from("dft")] = hist["step"]
    hist[stats.COST_FROM_PREFIX + "xtb"] = 0.2 * 2 * hist["step"]
    hist[stats.COST_FROM_PREFIX + "dft"] = hist["step"]
    g = build.build_report(runs_of(hist), hist).grids[0]
    s = g.summary.set_index("arm")
    fin = 0.8 * a / math.sqrt(1000)
    assert s.loc["ens", f"final_{CM.TEST_P95_AE}"] == pytest.approx(3 * fin + 0.01)
    lo, hi = s.loc["ens", [f"final_{CM.TEST_P99_AE}_lo", f"final_{CM.TEST_P99_AE}_hi"]]
    assert lo < 5 * fin + 0.01 < hi and s.loc["ens", f"final_{CM.TEST_MAX_AE}_n"] == 3
    assert s.loc["ens", stats.COST_FROM_PREFIX + "xtb"] == pytest.approx(400)
    assert s.loc["ens", CM.labels_from("dft")] == 1000
    table = display.final_model_display(g.summary).set_index("arm")
    assert list(table.columns) == ["seeds", *display.METRIC_TITLES.values()]
    assert table.loc["ens", "RMSE (eV)"].startswith(f"{1.5 * fin + 0.01:.4g} ± ")
    costs = display.fidelity_display(g.summary).set_index("arm")
    assert (
        costs.loc["ens", "cost on xtb"] == "400" and costs.loc["ens", "labels from dft"] == "1000"
    )
    # paired: every seed's final RMSE is 1.5 x 0.2 a/sqrt(1000) lower, a zero-width CI of 3
    p = g.paired.set_index("arm")
    d = p.loc["ens", f"final_{CM.TEST_RMSE}_diff"]
    assert d == pytest.approx(-1.5 * 0.2 * a / math.sqrt(1000))
    assert p.loc["ens", f"final_{CM.TEST_NLL}_diff"] == pytest.approx(-0.8 + 1.0)
    # labels to reach random's final MAE a/sqrt(1000): the 20 % lower power law needs 640
    assert p.loc["ens", "ref_final_target_mae"] == pytest.approx(a / math.sqrt(1000))
    assert p.loc["ens", "ref_final_n_arm"] == pytest.approx(640, rel=0.01)
    assert math.isnan(p.loc["bad", "ref_final_n_arm"])
    shown = display.paired_display(g.paired).set_index("arm")["labels to baseline's final MAE"]
    assert shown["ens"].startswith("6") and shown["bad"].startswith(stats.NOT_REACHED)
    assert "(baseline: 1,000 labels" in shown["bad"]


# --- end to end against the tracking server ----------------------------------------------------
def _log_campaign(
    client: MlflowClient,
    exp_id: str,
    arm: str,
    seed: int,
    scale: float,
    status: str,
    parent: str = "",
) -> str:
    """A fake campaign run: tags as the loop sets them, MAE = scale (1 + seed/20) n^-1/2."""
    tags = {"al.kind": "campaign", "al.strategy": arm, "al.oracle": "dft", "al.seed": str(seed),
            "al.cell": arm, "al.grid": "tiny"}  # fmt: skip
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, tags=tags, run_name=f"{arm}-s{seed}")
    ts = int(time.time() * 1000)
    metrics = []
    for r, n in enumerate((100, 150, 200, 250)):
        mae = scale * (1 + 0.05 * seed) * n**-0.5
        vals = {
            CM.TEST_MAE: mae, CM.N_LABELLED: n, CM.COST_SPENT: 2.0 * n, CM.ROUND: r,
            CM.TEST_NLL: -1.0, CM.TEST_SPEARMAN: 0.3, CM.TEST_MISCALIBRATION: 0.1,
            CM.TIME_FIT: 1.0, CM.TIME_LABEL: 0.1,
        }  # fmt: skip
        metrics += [Metric(k, float(v), ts, n) for k, v in vals.items()]
    client.log_batch(run.info.run_id, metrics=metrics, synchronous=True)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.mark.slow
def test_compare_cli_end_to_end(tracking: str, tmp_path: Path) -> None:
    client = MlflowClient()
    name = f"compare-{uuid.uuid4().hex[:8]}"
    exp_id = client.create_experiment(name)
    parent = client.create_run(exp_id, tags={"al.kind": "experiment"}).info.run_id
    for seed in range(3):
        _log_campaign(client, exp_id, "random", seed, 10.0, "FINISHED", parent)
        _log_campaign(client, exp_id, "ensemble", seed, 7.0, "FINISHED", parent)
    running = _log_campaign(client, exp_id, "ensemble", 9, 1.0, "RUNNING", parent)
    outside = _log_campaign(client, exp_id, "coreset", 0, 8.0, "FINISHED")  # not in the grid
    client.set_terminated(parent, "FINISHED")

    out = tmp_path / "report"
    args = [
        "compare",
        "--experiment-name",
        name,
        "--output-dir",
        str(out),
        "--mae-targets",
        "0.7,0.6",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "skipped 1 unfinished campaign run" in result.output
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for text in (md, page):
        assert name in text and "random" in text and "ensemble" in text
        assert stats.BETTER in text and "al compare --experiment-name" in text
        assert running not in text
    assert "| tiny | ensemble | 3 | 0, 1, 2 |" in md and "| tiny | coreset | 1 | 0 |" in md
    one_pair = f"| coreset | random | 1 | 250 | {-2 / math.sqrt(250):+.4f} ± {stats.ONE_SEED} |"
    assert one_pair in md  # 1 pair: no CI
    assert stats.TOO_FEW in md
    assert "data:image/png;base64," in page

    report_id = result.output.strip().splitlines()[-1].split()[-1]
    reports = client.search_runs([exp_id], filter_string="tags.`al.kind` = 'report'")
    assert [r.info.run_id for r in reports] == [report_id]
    rep = reports[0]
    assert rep.info.status == "FINISHED" and rep.data.tags["al.report_of"] == name
    assert rep.data.params["resolved_mae_targets"] == "0.7,0.6"
    top = {a.path for a in client.list_artifacts(report_id)}
    assert {"report.md", "report.html", "plots", "tables"} <= top
    plots = {a.path for a in client.list_artifacts(report_id, "plots")}
    assert "plots/mae_vs_labels_tiny.png" in plots

    # the same grid selected as the children of its parent run: the outside run is not in it
    out2 = tmp_path / "by-parent"
    args = ["compare", "--parent-run", parent, "--output-dir", str(out2), "--no-log"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    md = (out2 / "report.md").read_text()
    assert f"children of run {parent}" in md and f"--parent-run {parent}" in md
    assert "| tiny | ensemble | 3 |" in md and "coreset" not in md and outside not in md
    assert "report run:" not in result.output
    assert len(client.search_runs([exp_id], filter_string="tags.`al.kind` = 'report'")) == 1

    # only some arms, read against one arm whatever its settings
    out3 = tmp_path / "arms"
    args = ["compare", "--experiment-name", name, "--output-dir", str(out3), "--no-log",
            "--arms", "coreset,ensemble", "--baseline", "arm:ensemble"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    md = (out3 / "report.md").read_text()
    assert "| tiny | ensemble | 3 |" in md and "| tiny | coreset | 1 |" in md
    assert "| tiny | random |" not in md and "--arms coreset,ensemble" in md
    assert "| coreset | ensemble | 1 |" in md  # coreset paired with ensemble
    args[-3] = "coreset,nope"
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "--arms: no finished campaign of arm(s) nope" in result.output


@pytest.mark.slow
def test_compare_cli_errors(tracking: str, tmp_path: Path) -> None:
    client = MlflowClient()
    empty = f"compare-empty-{uuid.uuid4().hex[:8]}"
    exp_id = client.create_experiment(empty)
    client.create_run(exp_id, tags={"al.kind": "train"})
    runner = CliRunner()
    res = runner.invoke(main, ["compare", "--experiment-name", "nope-" + empty, "--no-log"])
    assert res.exit_code != 0
    assert f"no experiment named 'nope-{empty}'; existing:" in res.output and empty in res.output
    res = runner.invoke(main, ["compare", "--experiment-name", empty, "--output-dir",
                               str(tmp_path), "--no-log"])  # fmt: skip
    assert res.exit_code != 0 and "no finished campaign runs" in res.output
    assert f"experiment '{empty}'" in res.output
    res = runner.invoke(main, ["compare"])
    assert res.exit_code != 0 and "--experiment-name" in res.output
    res = runner.invoke(main, ["compare", "--parent-run", "0" * 32, "--no-log"])
    assert res.exit_code != 0 and f"no run with id '{'0' * 32}'" in res.output
    res = runner.invoke(main, ["compare", "--experiment-name", empty, "--mae-targets", "x"])
    assert res.exit_code != 0 and "--mae-targets: 'x' is not a number" in res.output


@pytest.mark.slow
def test_runs_settings_and_cost_per_fidelity_from_the_server(tracking: str, tmp_path: Path) -> None:
    """The settings an arm is matched on come from tags and params; the cost per fidelity of
    a multi-fidelity run is summed from its queried tables (failed requests included)."""
    from mlflow.entities import Param

    client = MlflowClient()
    exp_id = client.create_experiment(f"compare-mf-{uuid.uuid4().hex[:8]}")
    tags = {"al.kind": "campaign", "al.strategy": "ensemble", "al.oracle": "xtb,dft",
            "al.seed": "0", "al.uncertainty": "mc_dropout",
            "al.acquisition": "max_std"}  # fmt: skip
    run_id = client.create_run(exp_id, tags=tags).info.run_id
    ts = int(time.time() * 1000)
    metrics = []
    for r, (n, cost) in enumerate(((200, 120.0), (260, 130.5))):
        vals = {MAE: 0.5 / (r + 1), CM.N_LABELLED: n, CM.COST_SPENT: cost, CM.ROUND: r,
                CM.labels_from("xtb"): 100 + 40 * r,
                CM.labels_from("dft"): 100 + 20 * r}  # fmt: skip
        metrics += [Metric(k, float(v), ts, n) for k, v in vals.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param("batch_size", "50")], synchronous=True)
    rows = {0: [("xtb", "ok", 0.2)] * 100 + [("dft", "ok", 1.0)] * 100,
            1: [("xtb", "ok", 0.2)] * 40 + [("xtb", "scf_not_converged", 0.2)] * 5
            + [("dft", "ok", 1.0)] * 9}  # fmt: skip
    for r, table in rows.items():
        frame = pd.DataFrame(table, columns=["oracle", "status", "cost"]).assign(round=r)
        (tmp_path / f"round_{r:03d}").mkdir()
        frame.to_csv(tmp_path / f"round_{r:03d}" / "queried.csv", index=False)
        client.log_artifacts(run_id, str(tmp_path / f"round_{r:03d}"), f"rounds/round_{r:03d}")
    client.set_terminated(run_id, "FINISHED")

    sel = read.find_campaign_runs(client, client.get_experiment(exp_id).name)
    runs = read.runs_frame(sel.runs)
    assert runs.iloc[0][["uncertainty", "acquisition", "batch_size"]].tolist() == [
        "mc_dropout", "max_std", "50",
    ]  # fmt: skip
    hist = read.join_histories(runs, read.fetch_histories(client, sel.runs))
    last = hist.sort_values("step").iloc[-1]
    assert last[stats.COST_FROM_PREFIX + "xtb"] == pytest.approx(0.2 * 145)
    assert last[stats.COST_FROM_PREFIX + "dft"] == pytest.approx(109.0)
    assert hist[stats.COST_FROM_PREFIX + "dft"].tolist() == pytest.approx([100.0, 109.0])
    assert last[CM.labels_from("xtb")] == 140
    costs = display.fidelity_display(build.build_report(runs, hist).grids[0].summary)
    assert costs.iloc[0]["cost on xtb"] == "29" and costs.iloc[0]["labels from dft"] == "120"


@pytest.mark.slow
def test_a_baselines_cost_is_a_column_of_its_own(tracking: str) -> None:
    """A Δ-learning run's cost_spent = DFT labels + its baseline's cheap labels: the report
    shows them apart (cost on dft, cost on <baseline> (baseline)) and adds them up."""
    from mlflow.entities import Param

    client = MlflowClient()
    exp_id = client.create_experiment(f"compare-baseline-{uuid.uuid4().hex[:8]}")
    tags = {"al.kind": "campaign", "al.strategy": "random", "al.oracle": "dft", "al.seed": "0"}
    run_id = client.create_run(exp_id, tags=tags).info.run_id
    ts = int(time.time() * 1000)
    metrics = [
        Metric(k, float(v), ts, n)
        for r, n in enumerate((100, 150))
        for k, v in {
            MAE: 0.1 / (r + 1),
            CM.N_LABELLED: n,
            CM.ROUND: r,
            CM.COST_SPENT: n + 0.001 * (n + 20),
            CM.COST_BASELINE: 0.001 * (n + 20),
            CM.labels_from("dft"): n,
        }.items()
    ]
    client.log_batch(run_id, metrics=metrics, params=[Param("baseline", "xtb")], synchronous=True)
    client.set_terminated(run_id, "FINISHED")
    sel = read.find_campaign_runs(client, client.get_experiment(exp_id).name)
    runs = read.runs_frame(sel.runs)
    hist = read.join_histories(runs, read.fetch_histories(client, sel.runs))
    assert hist[stats.COST_FROM_PREFIX + "dft"].tolist() == pytest.approx([100.0, 150.0])
    assert hist[stats.COST_FROM_PREFIX + "xtb (baseline)"].tolist() == pytest.approx([0.12, 0.17])
    costs = display.fidelity_display(build.build_report(runs, hist).grids[0].summary).iloc[0]
    assert costs["cost on dft"] == "150" and costs["cost on xtb (baseline)"] == "0.17"
    assert costs["total cost"] == "150.2" and "labels from xtb (baseline)" not in costs


def test_delta_arm_is_read_against_direct_learning_and_shorter_arms_at_their_end() -> None:
    """A Δ-learning random arm is compared with the direct random arm of the same settings;
    an arm run to fewer labels than its reference is compared where it ends (equal labels),
    its other errors too; per seed, the labels each run needs to reach its reference run's
    final MAE."""
    long = [1000.0, 2000.0, 3000.0, 4000.0, 5000.0]

    def curve(scale: float, offset: float = 0.0):
        return lambda n, seed: scale * (n / 1000.0) ** -0.5 + offset + 0.001 * seed

    hist = pd.concat(
        [
            histories({"random": curve(0.14)}, seeds=(0, 1, 2), steps=long),
            histories({"lcmd": curve(0.12)}, seeds=(0, 1, 2), steps=long[:4]),
            histories({"xtb_random": curve(0.05)}, seeds=(0, 1, 2), steps=long[:2]),
        ],
        ignore_index=True,
    )
    hist[CM.TEST_RMSE] = hist[MAE] * 1.5
    runs = runs_of(hist, strategy={"xtb_random": "random"}, baseline={"xtb_random": "xtb"})
    refs, notes = build.reference_arms(runs, "random")
    assert refs == {"lcmd": "random", "random": None, "xtb_random": "random"} and not notes
    # a random arm on another labeller's labels is read against random on DFT labels
    labels = runs[runs["arm"] == "random"].assign(arm="pretrained_labels", oracle="pretrained")
    refs, notes = build.reference_arms(pd.concat([runs, labels]), "random")
    assert refs["pretrained_labels"] == "random" and refs["random"] is None and not notes
    report = build.build_report(runs, hist, experiment_name="synthetic")
    paired = report.grids[0].paired.set_index("arm")
    # lcmd ends at 4,000 labels: compared there with random at 4,000, not at 5,000
    assert paired.loc["lcmd", "final_step"] == 4000.0
    want = 0.12 * 4**-0.5 - 0.14 * 4**-0.5
    assert paired.loc["lcmd", "final_diff"] == pytest.approx(want)
    assert paired.loc["lcmd", f"final_{CM.TEST_RMSE}_diff"] == pytest.approx(1.5 * want)
    # per seed: lcmd reaches random's 5,000-label MAE (0.0626 + 0.001 seed) between 3,000
    # and 4,000 labels in every seed; the Δ arm is below it from its first round
    assert paired.loc["lcmd", "ref_seed_reached"] == 3
    assert 3000 < paired.loc["lcmd", "ref_seed_n"] < 4000
    assert paired.loc["xtb_random", "ref_seed_n"] == 1000.0
    assert paired.loc["xtb_random", "ref_seed_at_start"]
    shown = display.paired_display(report.grids[0].paired).set_index("arm")
    assert shown.loc["xtb_random", "labels to baseline's final MAE, per seed (± CI)"].startswith(
        "≤ 1000"
    )


def test_campaigns_on_a_pool_are_said_to_be_measured_on_held_out_molecules() -> None:
    """A pool campaign has no ground truth: its section says what its 'test' figures are."""
    hist = histories(
        {"random": lambda n, s: 1.0 / np.sqrt(n), "lcmd": lambda n, s: 0.9 / np.sqrt(n)}
    )
    runs = runs_of(hist)
    plain = build.build_report(runs, hist).grids[0].notes
    assert not any("held-out" in n for n in plain)
    runs.loc[runs["arm"] == "lcmd", "evaluated_on"] = "held-out labelled molecules"
    notes = build.build_report(runs, hist).grids[0].notes
    assert notes[0].startswith("lcmd: campaigns on a pool") and "held-out" in notes[0]
