"""A campaign on two versions of the code on one machine: the ratio of their wall times.

Checks the baseline revision out into a temporary git worktree and runs the same job there
and in this checkout:

- ``--job mission`` (default): ``benchmarks/campaign.py --preset mission``, both versions
  at the same time, one process each with the same threads, so that both see the same
  machine and the same load. Prints each version's wall time, phases, fit steps and final
  test MAE.
- ``--job main``: the README's main job (``mlflow run . -e al_loop --env-manager local``,
  a local SQLite store each), one version after the other, each with the whole machine, or
  with ``--at-once`` both at the same time, each pinned to a core of its own.

Writes the logs (and the mission's JSON) to ``--out`` and prints the ratio.

Example (the code before the fast model against this checkout, one thread each on a
2-core machine)::

    python benchmarks/mission_compare.py --baseline 969c7d5 --out reports/speed/mission
    python benchmarks/mission_compare.py --job main --out reports/speed/main_job
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: the last commit before the size-bucketed batches, the fused radial filters and the
#: shorter schedule
DEFAULT_BASELINE = "969c7d5"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare with")
    p.add_argument("--job", choices=["mission", "main"], default="mission")
    p.add_argument(
        "--at-once", action="store_true",
        help="main job: both versions at the same time, each pinned to a core of its own",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="threads of each campaign")
    p.add_argument("--uncertainty", default="shallow")
    p.add_argument("--out", type=Path, required=True, help="folder for logs and JSON")
    p.add_argument("--campaign-args", default="", help="further arguments of campaign.py, for both")
    return p.parse_args(argv)


def campaign_command(args: argparse.Namespace, json_path: Path) -> list[str]:
    if args.job == "main":
        return ["mlflow", "run", ".", "-e", "al_loop", "--env-manager", "local"]
    return [
        sys.executable, "benchmarks/campaign.py", "--preset", "mission",
        "--uncertainty", args.uncertainty, "--threads", str(args.threads),
        "--seed", str(args.seed), "--json", str(json_path), *args.campaign_args.split(),
    ]  # fmt: skip


def summarise(path: Path) -> dict:
    """Wall time, steps, phase seconds and the final model's test MAE of a campaign JSON."""
    rec = json.loads(path.read_text())
    rounds = rec["rounds"]
    final = rec.get("final_refit", {})
    phases: dict[str, float] = {}
    for row in rounds:
        for key, value in row.items():
            if key.endswith("_s") and not key.endswith("per_s") and value == value:
                phases[key[:-2]] = phases.get(key[:-2], 0.0) + float(value)
    refit_s = next((v for k, v in final.items() if k.endswith("time_fit_s")), None)
    if refit_s is not None:
        phases["final_refit"] = float(refit_s)
    refit_steps = int(next((v for k, v in final.items() if k.endswith("fit_steps")), 0))
    test_mae = next((v for k, v in final.items() if k.endswith("test_mae")), None)
    return {
        "total_s": rec["total_s"],
        "steps": sum(int(r["steps"]) for r in rounds if r.get("steps") == r.get("steps"))
        + refit_steps,
        "phases_s": phases,
        "last_round_test_mae": rounds[-1]["test_mae"],
        "final_test_mae": test_mae,
    }


def wait(name: str, run: tuple, walls: dict[str, float], out: Path) -> None:
    """Wait for one version's process; its wall time goes to ``walls``."""
    proc, _, log, t0 = run
    if proc.wait() != 0:
        raise SystemExit(f"the {name} run failed; see {out / (name + '.log')}")
    walls[name] = time.perf_counter() - t0
    log.close()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="al-baseline-") as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.baseline],
            check=True, capture_output=True,
        )  # fmt: skip
        try:
            runs, walls = {}, {}
            for name, root in (("baseline", tree), ("current", REPO)):
                json_path = (args.out / f"{name}.json").resolve()
                env = {**os.environ, "PYTHONPATH": str(root), "AL_PROGRESS": "0"}
                if args.job == "main":
                    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / name}.db"
                log = (args.out / f"{name}.log").open("w")
                cmd = campaign_command(args, json_path)
                if args.job == "main" and args.at_once:  # one core each: threads follow
                    cmd = ["taskset", "-c", str(len(runs)), *cmd]
                label = root if name == "current" else args.baseline
                print(f"{name} ({label}): {' '.join(cmd)}", flush=True)
                proc = subprocess.Popen(
                    cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
                )
                runs[name] = (proc, json_path, log, time.perf_counter())
                if args.job == "main" and not args.at_once:  # one after the other
                    wait(name, runs[name], walls, args.out)
            while len(walls) < len(runs):  # each run's wall time ends when it does
                for name, run in runs.items():
                    if name not in walls and run[0].poll() is not None:
                        wait(name, run, walls, args.out)
                time.sleep(0.5)
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                check=False, capture_output=True,
            )  # fmt: skip
    load_after = os.getloadavg()
    if args.job == "main":
        ratio = walls["current"] / walls["baseline"]
        print(f"\nload average (1, 5, 15 min) before {load_before}, after {load_after}")
        for name, wall in walls.items():
            print(f"{name:<9} {wall:>8.0f} s ({wall / 60:.2f} min)")
        print(f"\ncurrent / baseline wall time: {ratio:.3f}")
        summary = {"job": "main", "at_once": args.at_once, "baseline": args.baseline,
                   "walls_s": walls, "ratio": ratio,
                   "load_before": load_before, "load_after": load_after}  # fmt: skip
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
    result = {name: summarise(json_path) for name, (_, json_path, _, _) in runs.items()}
    ratio = result["current"]["total_s"] / result["baseline"]["total_s"]
    print(f"\nload average (1, 5, 15 min) before {load_before}, after {load_after}")
    print(f"{'version':<9} {'wall s':>8} {'steps':>7} {'final test MAE':>15}  phases (s)")
    for name, r in result.items():
        mae = r["final_test_mae"] if r["final_test_mae"] is not None else r["last_round_test_mae"]
        phases = ", ".join(f"{k} {v:.0f}" for k, v in r["phases_s"].items())
        print(f"{name:<9} {r['total_s']:>8.0f} {r['steps']:>7} {mae:>15.4f}  {phases}")
    print(f"\ncurrent / baseline wall time: {ratio:.3f}")
    summary = {
        "baseline": args.baseline, "seed": args.seed, "threads": args.threads,
        "load_before": load_before, "load_after": load_after, "ratio": ratio,
        "job": "mission", "walls_s": walls, **result,
    }  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
