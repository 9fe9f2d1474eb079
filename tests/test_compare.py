"""Comparison summary from finished runs (fake results.json files; no training)."""

import csv
import json
from pathlib import Path

import pytest

from feddat_flwr import tune
from feddat_flwr.compare import cell_dir, run_grid, verdict, write_summary
from feddat_flwr.launch import completed_results


def _fake_run(out, benchmark, method, seed, accs, rounds=2, run_dir=None):
    run_dir = run_dir or cell_dir(out, benchmark, method, seed)
    run_dir.mkdir(parents=True)
    variant = {"feddat": "dat", "fedavg": "shared"}[method]
    records = []
    for r in range(1, rounds + 1):
        clients = {str(i): {"eval": {"dat": a, "shared": a, "local": a, "majority": 0.1}} for i, a in enumerate(accs)}
        mean = sum(accs) / len(accs)
        records.append({"round": r, "clients": clients, "bytes-up": 100, "bytes-down": 200, "seconds": 1.5,
                        "eval": {variant: {"mean": mean * r / rounds, "min": min(accs)},
                                 "dat" if variant == "shared" else "shared": {"mean": 0, "min": 0}}})
    records[-1]["eval"][variant]["mean"] = sum(accs) / len(accs)
    results = {"config": {"num-rounds": rounds}, "rounds": records, "final": records[-1]["eval"]}
    (run_dir / "results.json").write_text(json.dumps(results))


def test_summary_table_marks_best_and_reports_mean_std(tmp_path):
    for seed, (a, b) in enumerate([(0.8, 0.6), (0.6, 0.6)]):
        _fake_run(tmp_path, "function", "feddat", seed, [a, b])
        _fake_run(tmp_path, "function", "fedavg", seed, [0.5, 0.7])
    rows = write_summary(tmp_path, ["function"], ["feddat", "fedavg"], [0, 1], "cmd")
    md = (tmp_path / "comparison.md").read_text()
    assert "| feddat (n=2) | **70.0 ± 14.1** | 60.0 ± 0.0 | **65.0 ± 7.1** | 0.0 | 3 |" in md
    assert "| fedavg (n=2) | 50.0 ± 0.0 | **70.0 ± 0.0** | 60.0 ± 0.0 |" in md
    assert "`cmd`" in md
    assert "FedDAT average 65.0 vs best baseline (fedavg) 60.0: +5.0 points, better than it, not beyond one std" in md
    with open(tmp_path / "comparison.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (tmp_path / "convergence-function.png").stat().st_size > 1000


def test_verdict_needs_a_gap_beyond_one_std_over_several_seeds():
    def row(method, mean, std, seeds=3):
        return {"method": method, "mean": mean, "std": std, "seeds": seeds}

    assert verdict([row("feddat", 0.70, 0.01), row("fedavg", 0.60, 0.02), row("feddat-no-kd", 0.9, 0.0)]) == (
        "FedDAT average 70.0 vs best baseline (fedavg) 60.0: +10.0 points, better than it, beyond one std over seeds.")
    assert verdict([row("feddat", 0.60, 0.0), row("local-only", 0.65, 0.0)]).endswith("not better than it.")
    assert "not beyond" in verdict([row("feddat", 0.70, 0.0, seeds=1), row("fedprox", 0.60, 0.0, seeds=1)])
    assert verdict([row("fedavg", 0.6, 0.0)]) == "FedDAT vs baselines: not both in this table."


def test_finished_cells_are_skipped_and_unfinished_ones_kept_aside(tmp_path, monkeypatch):
    _fake_run(tmp_path, "function", "feddat", 0, [0.5, 0.5])
    partial = cell_dir(tmp_path, "function", "fedavg", 0)
    partial.mkdir(parents=True)
    (partial / "results.json").write_text(json.dumps({"config": {"num-rounds": 2}, "rounds": [], "final": None}))
    launched = []
    monkeypatch.setattr("feddat_flwr.compare.run_simulation", lambda config, **kw: launched.append(config))
    run_grid(tmp_path, ["function"], ["feddat", "fedavg"], [0], {"num-rounds": 2}, num_clients=2)
    assert [c["method"] for c in launched] == ["fedavg"]
    assert launched[0]["preset"] == "function" and launched[0]["seed"] == 0
    kept = [p.name for p in partial.parent.iterdir() if p.name.startswith("seed-0.incomplete-")]
    assert len(kept) == 1 and completed_results(cell_dir(tmp_path, "function", "feddat", 0))


def test_grid_cells_take_the_given_learning_rates(tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr("feddat_flwr.compare.run_simulation", lambda config, **kw: launched.append(config))
    run_grid(tmp_path, ["function"], ["feddat", "fedavg"], [0, 1], {"num-rounds": 2}, num_clients=2,
             lrs={"function": {"fedavg": 0.004}})
    assert [(c["method"], c["seed"], c.get("train.lr")) for c in launched] == [
        ("feddat", 0, None), ("fedavg", 0, 0.004), ("feddat", 1, None), ("fedavg", 1, 0.004)]


def test_tuning_runs_on_the_validation_split_and_picks_the_best_lr(tmp_path, monkeypatch):
    accs = {("feddat", 0.001): 0.5, ("feddat", 0.004): 0.7, ("fedavg", 0.001): 0.6, ("fedavg", 0.004): 0.6}
    launched = []

    def fake_simulation(config, **kw):
        launched.append(config)
        _fake_run(None, None, config["method"], None, [accs[config["method"], config["train.lr"]]] * 2,
                  run_dir=Path(config["output-dir"]))

    monkeypatch.setattr("feddat_flwr.compare.run_simulation", fake_simulation)
    monkeypatch.setattr("feddat_flwr.tune.unwind_on_sigterm", lambda: None)  # keep pytest's own handler
    argv = ["--out", str(tmp_path), "--benchmarks", "function", "--methods", "feddat", "fedavg",
            "--lrs", "0.001", "0.004", "-c", "num-rounds=2"]
    assert tune.main(argv) == 0
    assert len(launched) == 4
    assert all(c["data.validation-fraction"] == 0.2 and c["seed"] == 0 for c in launched)
    # ties go to the smaller lr
    assert json.loads((tmp_path / "best-lr.json").read_text()) == {"function": {"feddat": 0.004, "fedavg": 0.001}}
    md = (tmp_path / "tuning.md").read_text()
    assert "| feddat | 50.0 | **70.0** |" in md and "| fedavg | **60.0** | 60.0 |" in md
    assert tune.main(argv) == 0 and len(launched) == 4  # resumable: nothing re-run


def test_tuning_rejects_bad_arguments(tmp_path, capsys):
    for argv, message in ((["--lrs", "0"], "--lrs must be > 0, got 0.0"),
                          (["--validation-fraction", "1"], "--validation-fraction must be in (0, 1), got 1.0"),
                          (["--methods", "fedsgd"], "invalid choice: 'fedsgd'")):
        with pytest.raises(SystemExit):
            tune.main(["--out", str(tmp_path), *argv])
        assert message in capsys.readouterr().err
