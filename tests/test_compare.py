"""Comparison summary and tuning from finished runs (results written by the real strategy from
hand-made client replies; no training)."""

import csv
import json
import math
from pathlib import Path

import pytest
from flwr.app import Message, MetricRecord, RecordDict

from feddat_flwr.flower.round_book import RoundBook
from feddat_flwr.flower.strategy import FedDAT
from feddat_flwr.records import EvalReport, completed_results
from feddat_flwr.results import RunRecorder
from feddat_flwr.tools import tune
from feddat_flwr.tools.compare import cell_dir, run_grid, verdict, write_summary
from feddat_flwr.tools.grid import parse_row

pytestmark = pytest.mark.usefixtures("task_identity")


def _eval_reply(node_id, pid, acc):
    """A client's evaluation reply as the ClientApp sends it."""
    sent = Message(content=RecordDict(), dst_node_id=node_id, message_type="evaluate")
    report = EvalReport(pid, 100, {"dat": acc, "shared": acc, "local": acc, "majority": 0.1})
    return Message(RecordDict({"metrics": MetricRecord(report.to_metrics())}), reply_to=sent)


def _fake_run(out, preset, method, seed, accs, rounds=2, run_dir=None, validation_fraction=0.0):
    """A run's results.json written by the real strategy, round book and recorder from client
    replies (only the training is left out): accuracies ramp up to `accs` in the last round."""
    run_dir = run_dir or cell_dir(out, preset, method, seed)
    run_dir.mkdir(parents=True)
    config = {"num-rounds": rounds, "method": method, "data": {"validation-fraction": validation_fraction}}
    recorder = RunRecorder(run_dir, config, {})
    strategy = FedDAT(book=RoundBook((), max_update_ratio=100.0, min_valid_replies=1), num_rounds=rounds, lr_for_round=lambda r: 0.01, weighting="uniform",
                      eval_every=1, fraction_train=1.0, min_train_nodes=1, min_available_nodes=1,
                      on_round_end=recorder.add_round)
    for r in range(1, rounds + 1):
        strategy.book.begin(r, 0.01)
        strategy.book.current.bytes_up, strategy.book.current.bytes_down = 100, 200
        replies = strategy.book.received([_eval_reply(10 + i, i, a * r / rounds) for i, a in enumerate(accs)])
        strategy.aggregate_evaluate(r, replies)


def _rows(*specs):
    return [parse_row(s) for s in specs]


def test_summary_table_marks_best_and_reports_mean_std(tmp_path):
    for seed, (a, b) in enumerate([(0.8, 0.6), (0.6, 0.6)]):
        _fake_run(tmp_path, "function", "feddat", seed, [a, b])
        _fake_run(tmp_path, "function", "fedavg", seed, [0.5, 0.7])
    rows = write_summary(tmp_path, ["function"], _rows("feddat", "fedavg"), [0, 1], "cmd")
    md = (tmp_path / "comparison.md").read_text()
    assert "| feddat (n=2) | **70.0 ± 14.1** | 60.0 ± 0.0 | **65.0 ± 7.1** | 0.0 | " in md  # then seconds
    assert "| fedavg (n=2) | 50.0 ± 0.0 | **70.0 ± 0.0** | 60.0 ± 0.0 |" in md
    assert "`cmd`" in md and "Personalised test accuracy" in md
    assert "FedDAT average 65.0 vs best baseline (fedavg) 60.0: +5.0 points, better than it, not beyond one std" in md
    with open(tmp_path / "comparison.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (tmp_path / "convergence-function.png").stat().st_size > 1000


def test_summary_pairs_feddat_with_each_row_seed_by_seed(tmp_path):
    """Differences are taken within a seed (same partition and start), over the seeds both rows
    finished: fedavg's seed 1 is missing, so only seeds 0 and 2 pair."""
    for seed, (ours, theirs) in enumerate([(0.70, 0.60), (0.50, None), (0.40, 0.45)]):
        _fake_run(tmp_path, "task", "feddat", seed, [ours])
        if theirs is not None:
            _fake_run(tmp_path, "task", "fedavg", seed, [theirs])
    write_summary(tmp_path, ["task"], _rows("feddat", "fedavg"), [0, 1, 2], "cmd")
    md = (tmp_path / "comparison.md").read_text()
    assert "| row | FedDAT minus row | FedDAT ahead |" in md
    assert "| fedavg | +2.5 ± 10.6 | 1 of 2 |" in md  # +10 and -5 points
    assert "| feddat |" not in md.split("Paired by seed")[1]


def test_summary_of_validation_runs_says_so(tmp_path):
    """A table chosen from (data.validation-fraction > 0) must not read as test accuracy."""
    for seed in (0, 1):
        _fake_run(tmp_path, "domain", "feddat", seed, [0.5], validation_fraction=0.2)
    write_summary(tmp_path, ["domain"], _rows("feddat"), [0, 1], "cmd")
    assert "Personalised validation accuracy" in (tmp_path / "comparison.md").read_text()


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
    RunRecorder(partial, {"num-rounds": 2}, {})  # started, no round finished
    launched = []
    monkeypatch.setattr("feddat_flwr.tools.grid.run_simulation", lambda config, **kw: launched.append(config))
    run_grid(tmp_path, ["function"], _rows("feddat", "fedavg"), [0], {"num-rounds": 2}, num_clients=2)
    assert [c["method"] for c in launched] == ["fedavg"]
    assert launched[0]["preset"] == "function" and launched[0]["seed"] == 0
    kept = [p.name for p in partial.parent.iterdir() if p.name.startswith("seed-0.incomplete-")]
    assert len(kept) == 1 and completed_results(cell_dir(tmp_path, "function", "feddat", 0))


def test_grid_cells_take_the_given_learning_rates(tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr("feddat_flwr.tools.grid.run_simulation", lambda config, **kw: launched.append(config))
    run_grid(tmp_path, ["function"], _rows("feddat", "fedavg"), [0, 1], {"num-rounds": 2}, num_clients=2,
             lrs={"function": {"fedavg": 0.004}})
    assert [(c["method"], c["seed"], c.get("train.lr")) for c in launched] == [
        ("feddat", 0, None), ("fedavg", 0, 0.004), ("feddat", 1, None), ("fedavg", 1, 0.004)]


def test_a_row_with_settings_of_its_own_runs_them_under_its_own_name(tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr("feddat_flwr.tools.grid.run_simulation",
                        lambda config, **kw: launched.append((config, kw)))
    run_grid(tmp_path, ["domain"], _rows("feddat+lora.rank=4+feddat.lambda=0.25"), [0], {}, num_clients=2)
    config = launched[0][0]
    assert (config["method"], config["lora.rank"], config["feddat.lambda"]) == ("feddat", 4, 0.25)
    assert config["output-dir"] == str(cell_dir(tmp_path, "domain", "feddat+lora.rank=4+feddat.lambda=0.25", 0))
    _fake_run(tmp_path, "domain", "feddat+lora.rank=4+feddat.lambda=0.25", 0, [0.5, 0.5])
    _fake_run(tmp_path, "domain", "fedavg", 0, [0.4, 0.4])
    write_summary(tmp_path, ["domain"], _rows("feddat+lora.rank=4+feddat.lambda=0.25", "fedavg"), [0], "cmd")
    assert "| feddat+lora.rank=4+feddat.lambda=0.25 (n=1) | **50.0 ± 0.0**" in (tmp_path / "comparison.md").read_text()


def _peaked(base, best_lr, lr):
    """An accuracy that falls by 5 points per doubling or halving of the lr away from best_lr."""
    return base - 0.05 * abs(math.log2(lr / best_lr))


def test_tuning_runs_on_the_validation_split_and_steps_beyond_an_edge(tmp_path, monkeypatch):
    launched = []

    def fake_simulation(config, **kw):  # feddat peaks at 0.016, beyond the start grid; fedavg is flat
        launched.append(config)
        acc = _peaked(0.7, 0.016, config["train.lr"]) if config["method"] == "feddat" else 0.6
        _fake_run(None, None, config["method"], None, [acc] * 2, run_dir=Path(config["output-dir"]))

    monkeypatch.setattr("feddat_flwr.tools.grid.run_simulation", fake_simulation)
    monkeypatch.setattr("feddat_flwr.tools.tune.unwind_on_sigterm", lambda: None)  # keep pytest's own handler
    argv = ["--out", str(tmp_path), "--presets", "function", "--methods", "feddat", "fedavg",
            "--lrs", "0.002", "0.004", "--extend", "3", "-c", "num-rounds=2"]
    assert tune.main(argv) == 0
    assert [(c["method"], c["train.lr"]) for c in launched] == [
        ("feddat", 0.002), ("feddat", 0.004), ("fedavg", 0.002), ("fedavg", 0.004),
        ("feddat", 0.008), ("feddat", 0.016), ("feddat", 0.032)]  # a flat fedavg takes no step
    # validation split, tuning seed, and evaluated after the last round only
    assert all(c["data.validation-fraction"] == 0.2 and c["seed"] == 0 and c["strategy.eval-every"] == 2
               for c in launched)
    # ties go to the smaller lr
    assert json.loads((tmp_path / "best-lr.json").read_text()) == {"function": {"feddat": 0.016, "fedavg": 0.002}}
    md = (tmp_path / "tuning.md").read_text()
    assert "| feddat | 55.0 | 60.0 | 65.0 | **70.0** | 65.0 |" in md and "| fedavg | **60.0** | 60.0 | - | - | - |" in md
    assert tune.main(argv) == 0 and len(launched) == 7  # resumable: nothing re-run


def test_a_tuning_whose_budget_ran_out_at_an_edge_says_so(tmp_path, monkeypatch):
    def fake_simulation(config, **kw):
        _fake_run(None, None, config["method"], None, [_peaked(0.7, 0.016, config["train.lr"])] * 2,
                  run_dir=Path(config["output-dir"]))

    monkeypatch.setattr("feddat_flwr.tools.grid.run_simulation", fake_simulation)
    monkeypatch.setattr("feddat_flwr.tools.tune.unwind_on_sigterm", lambda: None)
    tune.main(["--out", str(tmp_path), "--presets", "task", "--methods", "feddat", "--lrs", "0.002", "0.004",
               "--extend", "1", "-c", "num-rounds=2"])
    assert "| feddat | 55.0 | 60.0 | **65.0**† |" in (tmp_path / "tuning.md").read_text()


def test_a_step_beyond_the_edge_needs_a_strict_best_at_that_edge():
    assert tune.beyond_edge({0.002: 0.5, 0.004: 0.6}) == 0.008
    assert tune.beyond_edge({0.002: 0.6, 0.004: 0.5}) == 0.001
    assert tune.beyond_edge({0.002: 0.5, 0.004: 0.6, 0.008: 0.55}) is None
    assert tune.beyond_edge({0.002: 0.6, 0.004: 0.6}) is None
    assert tune.beyond_edge({0.002: 0.6}) is None


def test_tuning_rejects_bad_arguments(tmp_path, capsys):
    for argv, message in ((["--lrs", "0"], "--lrs must be > 0, got 0.0"),
                          (["--validation-fraction", "1"], "--validation-fraction must be in (0, 1), got 1.0"),
                          (["--methods", "fedsgd"], "unknown method 'fedsgd' in 'fedsgd'; allowed: feddat"),
                          (["--methods", "feddat+lr"], "expected key=value, got 'lr'")):
        with pytest.raises(SystemExit):
            tune.main(["--out", str(tmp_path), *argv])
        assert message in capsys.readouterr().err


def test_the_data_size_curve_tunes_each_size_on_validation_then_runs_its_seeds(tmp_path, monkeypatch):
    from feddat_flwr.tools import curve

    def accuracy(config):  # fedavg gains more from data; each method's best lr falls with the size
        n, lr, method = config["data.max-train"], config["train.lr"], config["method"]
        base = {"feddat": 0.7, "fedavg": 0.4 + n / 1000}[method]
        validation = 0.05 if config.get("data.validation-fraction") else 0.0
        return _peaked(base, 0.004 if n < 100 else 0.001, lr) - validation

    launched = []

    def fake_simulation(config, **kw):
        launched.append(config)
        _fake_run(None, None, config["method"], None, [accuracy(config)] * 2, run_dir=Path(config["output-dir"]))

    monkeypatch.setattr("feddat_flwr.tools.grid.run_simulation", fake_simulation)
    monkeypatch.setattr("feddat_flwr.tools.curve.unwind_on_sigterm", lambda: None)
    argv = ["--out", str(tmp_path), "--presets", "function", "--methods", "feddat", "fedavg", "--sizes", "500", "50",
            "--seeds", "0", "1", "--lrs", "0.001", "0.004", "-c", "num-rounds=2"]
    assert curve.main(argv) == 0
    # size 50 first: 2 methods x 2 lrs tuned, a step above the edge each, 2 methods x 2 seeds
    tuning, tests = launched[:6], launched[6:10]
    assert [(c["method"], c["train.lr"]) for c in tuning[4:]] == [("feddat", 0.008), ("fedavg", 0.008)]
    # the tuning's cap leaves 50 to train on once a fifth is held out (62 - 12)
    assert all(c["data.validation-fraction"] == 0.2 and c["seed"] == 0 and c["data.max-train"] == 62 for c in tuning)
    assert all("data.validation-fraction" not in c and c["train.lr"] == 0.004 and c["data.max-train"] == 50
               for c in tests)  # chosen at 50
    # size 500 starts from half, once and twice 0.004 and steps down twice to find 0.001
    tuning, tests = launched[10:20], launched[20:]
    assert sorted({c["train.lr"] for c in tuning}) == [0.0005, 0.001, 0.002, 0.004, 0.008]
    assert all(c["data.max-train"] == 625 for c in tuning)
    assert len(tests) == 4 and all(c["train.lr"] == 0.001 and c["data.max-train"] == 500 for c in tests)
    md = (tmp_path / "curve.md").read_text()
    assert "| feddat | **70.0 ± 0.0 (n=2, lr 0.004)** | 70.0 ± 0.0 (n=2, lr 0.001) |" in md
    assert "| fedavg | 45.0 ± 0.0 (n=2, lr 0.004) | **90.0 ± 0.0 (n=2, lr 0.001)** |" in md
    assert "| FedDAT minus | size 50 | size 500 |" in md
    assert "| fedavg | +25.0 ± 0.0 (2/2) | -20.0 ± 0.0 (0/2) |" in md  # where federation stops paying
    with open(tmp_path / "curve.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert (tmp_path / "curve.png").stat().st_size > 1000
    assert (tmp_path / "size-50" / "comparison.md").is_file() and (tmp_path / "size-50" / "tuning" / "best-lr.json").is_file()
    assert curve.main(argv) == 0 and len(launched) == 24  # resumable: nothing re-run


def test_the_tuning_cap_leaves_the_size_to_train_on():
    from feddat_flwr.data.partition import validation_size
    from feddat_flwr.tools.curve import tuning_cap

    assert [tuning_cap(n, 0.3333) for n in (50, 150, 500, 1500)] == [75, 225, 750, 2250]
    for n in (1, 7, 50, 333):
        for fraction in (0.1, 0.2, 0.3333, 0.5):
            cap = tuning_cap(n, fraction)
            assert cap - validation_size(cap, fraction) == n
