"""src.report's statistics options on MLflow runs logged by hand: CI cells, reference p-values with Holm,
subgroup gap tables."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from omegaconf import OmegaConf

from src.compare import compare
from src.errors import UserError
from src.report import report
from src.report_stats import PredictionStore
from src.stats.predictions import from_task, write_predictions
from tests.conftest import compose_train

RNG = np.random.default_rng(3)
N = 120
LABEL = (RNG.random(N) < 0.4).astype(int)


def mann_whitney(score: np.ndarray, label: np.ndarray) -> float:
    pos, neg = score[label == 1], score[label == 0]
    return float(((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean())


def log_run(
    client: MlflowClient, exp: str, tmp: Path, peft: str, seed: int, noise: float, dataset: str = "synthetic"
):
    score = 1 / (1 + np.exp(-(LABEL + RNG.normal(0, noise, N))))
    run = client.create_run(exp, tags={"peft": peft, "dataset": dataset})
    rid = run.info.run_id
    client.log_param(rid, "seed", str(seed))
    client.log_metric(rid, "test/auroc", mann_whitney(score, LABEL))
    client.log_metric(rid, "test/auroc_ci_low", 0.5)
    client.log_metric(rid, "test/auroc_ci_high", 0.75)
    client.log_metric(rid, "test/subgroup/sex/auroc_gap", 0.01 * (seed + 1))
    path = tmp / rid / "predictions_test.csv"
    path.parent.mkdir(parents=True)
    ids = [f"{i}.png" for i in range(N)]
    write_predictions(from_task(ids, torch.tensor(score), torch.tensor(LABEL), "binary", ("no", "yes")), path)
    client.log_artifact(rid, str(path))
    client.set_terminated(rid, "FINISHED")
    return score


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("report_stats")
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.create_experiment("synthetic", artifact_location=str(tmp / "art"))
    scores = {}
    for seed in (0, 1):
        scores[("full", seed)] = log_run(client, exp, tmp, "full", seed, 2.0)
        scores[("linear", seed)] = log_run(client, exp, tmp, "linear", seed, 0.3)
    scores[("linear", 0, "one")] = log_run(client, exp, tmp, "linear", 0, 0.3, dataset="other")
    return tmp, scores


def compose(tmp: Path, *overrides: str):
    return compose_train(
        [f"paths.log_dir={tmp}", f"out_dir={tmp}/report", "experiments=[synthetic]", *overrides],
        config_name="report",
    )


def test_single_run_cells_show_their_ci(store) -> None:
    tmp, scores = store
    _, paths = report(compose(tmp))
    md = paths[0].read_text()
    one = mann_whitney(scores[("linear", 0, "one")], LABEL)
    assert f"| other | – | {one:.3f} [0.500, 0.750] |" in md  # columns: full, linear by name (no trainable %)
    _, paths = report(compose(tmp, "ci=false"))
    assert f"| other | – | {one:.3f} |" in paths[0].read_text()


def test_reference_p_values_pair_seeds_and_are_holm_adjusted(store) -> None:
    tmp, scores = store
    _, paths = report(compose(tmp, "reference=full", "n_boot=300", "subgroups=true"))
    md = paths[0].read_text()
    assert "Δ vs full" in md and "| synthetic | linear | 2 |" in md
    rows = list(csv.DictReader(paths[-1].open()))
    (row,) = rows  # the row "other" has no full run to compare with
    expected = np.mean(
        [
            mann_whitney(scores[("linear", s)], LABEL) - mann_whitney(scores[("full", s)], LABEL)
            for s in (0, 1)
        ]
    )
    assert float(row["delta"]) == pytest.approx(expected)
    assert float(row["ci_low"]) > 0 and float(row["p"]) < 0.01
    assert float(row["p_holm"]) == pytest.approx(float(row["p"]))  # a family of one
    assert "test/subgroup/sex/auroc_gap (mean ± std)" in md and "0.015 ± 0.007" in md
    with pytest.raises(UserError, match="reference='lora' is not a column"):
        report(compose(tmp, "reference=lora"))
    with pytest.raises(UserError, match="compares test AUROC"):
        report(compose(tmp, "reference=full", "metric=test/auroc_ci_low"))


def test_compare_takes_mlflow_run_ids(store) -> None:
    tmp, scores = store
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    runs = client.search_runs(client.get_experiment_by_name("synthetic").experiment_id, "params.seed = '1'")
    by_peft = {r.data.tags["peft"]: r.info.run_id for r in runs if r.data.tags["dataset"] == "synthetic"}
    cfg = OmegaConf.create(
        {
            "runs": [by_peft["full"], by_peft["linear"]],
            "n_boot": 50,
            "seed": 0,
            "ci": 0.95,
            "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
        }
    )
    result = compare(cfg)
    expected = mann_whitney(scores[("linear", 1)], LABEL) - mann_whitney(scores[("full", 1)], LABEL)
    assert result["macro"]["delta"] == pytest.approx(expected)
    cfg.runs = [by_peft["full"], "0" * 32]
    with pytest.raises(UserError, match=r"no predictions_test\.csv artifact"):
        compare(cfg)


def test_a_run_without_predictions_is_named(store, tmp_path: Path) -> None:
    tmp, _ = store
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    run = client.create_run(client.get_experiment_by_name("synthetic").experiment_id, run_name="bare")
    with pytest.raises(UserError, match=r"\(bare\) has no predictions_test\.csv artifact"):
        PredictionStore(client, tmp_path).get(client.get_run(run.info.run_id))
