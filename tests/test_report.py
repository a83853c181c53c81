"""python -m src.report: the paper table from MLflow runs, checked against numbers logged by hand."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
from mlflow import MlflowClient

from src.errors import UserError
from src.report import report
from tests.conftest import compose_train

STRATEGIES = {"linear": (None, 0.021, 1900), "lora": ("4", 0.688, 51900)}
TARGETS = {"linear": "src.strategies.linear.LinearProbe", "lora": "src.strategies.lora.LoRA"}


def log_run(client: MlflowClient, exp: str, peft: str, value: float | None, **tags: str) -> None:
    rank, pct, size = STRATEGIES[peft]
    run = client.create_run(exp, tags={"peft": peft, "dataset": "synthetic", **tags})
    client.log_param(run.info.run_id, "peft._target_", TARGETS[peft])  # the strategy labels its column
    if rank is not None:
        client.log_param(run.info.run_id, "peft.rank", rank)
    if value is not None:
        for key, v in (("test/auroc", value), ("trainable_pct", pct), ("adapter_bytes", size)):
            client.log_metric(run.info.run_id, key, v)
    client.set_terminated(run.info.run_id, "FINISHED" if value is not None or tags else "FAILED")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("synthetic", artifact_location=str(tmp_path / "art"))
    for seed, value in enumerate([0.90, 0.92, 0.94]):
        log_run(client, exp, "lora", value, seed=str(seed), sweep_id="a")
    for fold, value in enumerate([0.80, 0.84]):
        log_run(client, exp, "linear", value, fold=str(fold), sweep_id="a")
    log_run(client, exp, "lora", 0.70, label_fraction="0.1", sweep_id="a")
    log_run(client, exp, "lora", None)  # a failed run: not in the table
    log_run(client, exp, "lora", None, sweep_role="parent")  # a sweep's parent: no metric
    log_run(client, exp, "lora", 0.10, sweep_id="other")
    # A sweep's parent repeats its best job's metric: never a run of the table.
    log_run(client, exp, "lora", 0.99, sweep_role="parent", sweep_id="a")
    # Same cell (synthetic, lora r4), different training length: must not be pooled. Seeds and
    # machine-specific values (run dir) differ between every run and must not split a cell.
    for i, (epochs, value) in enumerate([("10", 0.90), ("10", 0.94), ("2", 0.50)]):
        log_run(client, exp, "lora", value, sweep_id="mixed")
        run_id = client.search_runs([exp], order_by=["attributes.start_time DESC"], max_results=1)[
            0
        ].info.run_id
        for key, v in (("trainer.max_epochs", epochs), ("seed", str(i)), ("paths.output_dir", f"/tmp/r{i}")):
            client.log_param(run_id, key, v)
        if i == 1:  # a run logged by a later version, with a console callback the others lack
            client.log_param(run_id, "callbacks.progress._target_", "src.callbacks.progress.ProgressLog")
    other = client.create_experiment("second", artifact_location=str(tmp_path / "art2"))
    log_run(client, other, "linear", 0.60, dataset="second")
    return tmp_path


def compose_report(store: Path, *overrides: str):
    return compose_train(
        [f"paths.log_dir={store}", f"out_dir={store}/report", *overrides], config_name="report"
    )


def test_table_cells_are_mean_and_std_over_seeds_and_folds(store: Path) -> None:
    cfg = compose_report(store, "experiments=[synthetic]", "sweep=a")
    table, paths = report(cfg)
    assert table.runs == 6 and table.columns == ["linear", "lora r4"]  # ordered by trainable share
    md = paths[0].read_text()
    assert "| synthetic | 0.820 ± 0.028 | 0.920 ± 0.020 |" in md  # sample std (ddof=1)
    assert "| synthetic @ 10% labels | – | 0.700 |" in md
    assert "| *trainable %* | 0.021 % | 0.688 % |" in md and "51.9 kB" in md
    rows = {(r["dataset"], r["strategy"]): r for r in csv.DictReader(paths[1].open())}
    assert rows[("synthetic", "lora r4")]["n"] == "3"
    assert float(rows[("synthetic", "lora r4")]["mean"]) == pytest.approx(0.92)
    tex = paths[2].read_text()
    assert "synthetic & 0.820 $\\pm$ 0.028 & 0.920 $\\pm$ 0.020 \\\\" in tex
    assert "\\toprule" in tex and "trainable \\%" in tex


def test_filters_select_runs_and_unknown_experiment_is_named(store: Path) -> None:
    table, _ = report(compose_report(store, "experiments=[synthetic]", "+tags.sweep_id=other"))
    assert table.runs == 1 and table.cells[("synthetic", "lora r4")].values == [0.10]
    with pytest.raises(UserError, match=r"no MLflow experiment named 'cxr'.*synthetic"):
        report(compose_report(store, "experiments=[cxr]"))
    rank_filter = "filter=\"params.`peft.rank` = '4'\""  # as on the command line, in Hydra's quotes
    assert report(compose_report(store, "experiments=[synthetic]", "sweep=a", rank_filter))[0].columns == [
        "lora r4"
    ]


def test_runs_of_different_settings_are_never_pooled(store: Path, capsys: pytest.CaptureFixture) -> None:
    table, paths = report(compose_report(store, "sweep=mixed"))
    assert table.columns == ["lora r4 [trainer.max_epochs=10]", "lora r4 [trainer.max_epochs=2]"]
    long = table.cells[("synthetic", "lora r4 [trainer.max_epochs=10]")]
    assert sorted(long.values) == pytest.approx([0.90, 0.94]) and long.mean == pytest.approx(
        statistics.mean([0.9, 0.94])
    )
    assert long.std == pytest.approx(statistics.stdev([0.90, 0.94]))
    assert table.cells[("synthetic", "lora r4 [trainer.max_epochs=2]")].values == [0.50]
    assert len(table.notes) == 1 and "differ in trainer.max_epochs" in table.notes[0]
    assert "Note: synthetic, lora r4: 3 runs differ in trainer.max_epochs" in paths[0].read_text()


def test_no_arguments_reads_every_experiment_of_the_store_named_by_the_environment(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    cfg = compose_train([f"paths.log_dir={tmp_path}", f"out_dir={tmp_path}/report"], config_name="report")
    table, _ = report(cfg)
    assert set(table.rows) == {"synthetic", "synthetic @ 10% labels", "second"}
    assert table.cells[("second", "linear")].values == [0.60]
    # the parent's 0.99 is nowhere
    assert all(0.99 not in cell.values for cell in table.cells.values())


def test_unknown_sweep_lists_the_known_ones(store: Path) -> None:
    with pytest.raises(UserError, match=r"sweep=nope: no such sweep.*known sweep ids: a\.$"):
        report(compose_report(store, "sweep=nope"))
