"""Kill and resume: a run killed mid-epoch (SIGKILL) or preempted (SIGTERM) and resumed with the same command
plus resume=true ends with exactly the metrics of an uninterrupted run, in the same run dir and MLflow run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from src.errors import UserError
from src.resume import find_run, resume_argv
from src.train import cli, main, train
from tests.conftest import compose_train, run_cli

# 3 steps per epoch, 2 epochs: as short as a run can be and still be killed mid-epoch after a checkpoint.
RUN = [
    "dataset.sizes.train=48",
    "dataset.sizes.val=16",
    "dataset.sizes.test=16",
    "dataset.batch_size=16",
    "trainer.max_epochs=2",
]


def kill_at(step: int, marker: Path, sig: str = "SIGKILL") -> list[str]:
    return [
        "+callbacks.kill._target_=tests.kill_switch.KillAtStep",
        f"+callbacks.kill.step={step}",
        f"+callbacks.kill.marker={marker}",
        f"+callbacks.kill.sig={sig}",
    ]


def scores(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    metrics = train(compose_train([*RUN, "logger=none"], tmp_path_factory.mktemp("ref")))
    return {**scores(metrics), "best": Path(metrics["best_checkpoint"]).name}


def test_sigkill_mid_epoch_with_workers_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, uninterrupted
) -> None:
    # Two loader worker processes (the reference ran with none: augmentation is a function of the sample,
    # not of the worker). Killed in epoch 1's third batch; last.ckpt is from step 4, mid-epoch.
    command = [*RUN, "dataset.num_workers=2", "callbacks.last_checkpoint.every_n_train_steps=2"]
    command += ["logger=csv", f"paths.log_dir={tmp_path}", *kill_at(5, tmp_path / "killed")]
    killed = run_cli(*command)
    assert killed.returncode == -9, killed.stderr[-2000:]
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "metrics.json").exists()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4

    resumed = run_cli(*command, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [p.name for p in (tmp_path / "train" / "runs").iterdir()] == [run_dir.name]  # no new run dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {
        **scores(metrics),
        "best": Path(metrics["best_checkpoint"]).name,
    } == uninterrupted  # bit-identical
    # The best-checkpoint callback's state came back too: it kept exactly one best file, as uninterrupted.
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("best_*")) == [uninterrupted["best"]]

    # Lightning's CSVLogger would delete the killed run's log: it is kept beside the continuation's.
    before = (run_dir / "csv" / "metrics.until_step4.csv").read_text()
    after = (run_dir / "csv" / "metrics.csv").read_text()
    assert before.splitlines()[1].startswith("0,2,") and "test/auroc" in after.splitlines()[0]
    assert not list(run_dir.rglob(".*.tmp"))


def test_sigterm_writes_a_checkpoint_and_resumes_exactly(tmp_path: Path, uninterrupted, capsys) -> None:
    # No periodic saves: the last.ckpt at step 4 can only come from the SIGTERM handling.
    common = [*RUN, "callbacks.last_checkpoint.every_n_train_steps=0", "logger=mlflow"]
    common += kill_at(3, tmp_path / "termed", "SIGTERM")
    cfg = compose_train(common, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    assert exit_info.value.code == 143  # 128 + SIGTERM, what a scheduler expects from a terminated job
    assert "preempted: stopped by SIGTERM at step 4; continue with resume=true" in capsys.readouterr().err
    run_dir = Path(cfg.paths.output_dir)
    # SIGTERM arrived before step 4's batch (epoch 1); that batch finished and was checkpointed.
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    client = mlflow.MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()
    assert client.get_run(run_id).info.status == "KILLED"

    metrics = train(compose_train([*common, "resume=true"], tmp_path))
    assert {
        **scores(metrics),
        "best": Path(metrics["best_checkpoint"]).name,
    } == uninterrupted  # bit-identical
    run = client.get_run(run_id)  # the same MLflow run, finished, with the epochs before and after
    assert metrics["mlflow_run_id"] == run_id and run.info.status == "FINISHED"
    assert run.data.tags["resumed_at_step"] == "4"
    assert len(client.get_metric_history(run_id, "val/auroc")) == 3  # 2 epochs + best re-validated


def fake_run(runs: Path, name: str, overrides: list[str], ckpt: bool = True, finished: bool = False) -> Path:
    run = runs / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    if ckpt:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    if finished:
        (run / "metrics.json").write_text("{}")
    return run


def test_resume_true_picks_the_latest_run_with_the_same_overrides(tmp_path: Path) -> None:
    runs = tmp_path / "train" / "runs"
    args = [f"paths.log_dir={tmp_path}", "rank=8", "peft=lora"]
    fake_run(runs, "2026-01-01_00-00-00_lora_synthetic", ["peft=lora", f"paths.log_dir={tmp_path}", "rank=8"])
    latest = fake_run(runs, "2026-01-02_00-00-00_lora_synthetic", [*args, "resume=true"])
    fake_run(runs, "2026-01-03_00-00-00_lora_synthetic", [f"paths.log_dir={tmp_path}", "rank=4"])
    assert find_run(args) == latest
    argv = resume_argv([*args, "resume=true"])
    assert argv[-2:] == [f"resume={latest}", f"hydra.run.dir={latest}"]

    # resume=RUN_DIR brings back the run's own overrides; ones given now come after them and win.
    argv = resume_argv([f"resume={latest}", "trainer.max_epochs=20", "rank=16"])
    assert f"paths.log_dir={tmp_path}" in argv and "rank=8" not in argv and "rank=16" in argv


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("none", "no run under"),
        ("no_ckpt", "stopped before its first checkpoint"),
        ("finished", "already finished"),
        ("multirun", "resume applies to one run"),
    ],
)
def test_nothing_to_resume_is_one_clear_line(setup: str, message: str, tmp_path: Path, monkeypatch) -> None:
    runs, args = tmp_path / "train" / "runs", [f"paths.log_dir={tmp_path}"]
    if setup in ("no_ckpt", "finished"):
        fake_run(runs, "r", args, ckpt=setup == "finished", finished=setup == "finished")
    if setup == "multirun":
        args = ["-m", *args]
    with pytest.raises(UserError, match=message):
        resume_argv([*args, "resume=true"])
    monkeypatch.setattr(sys, "argv", ["src.train", *args, "resume=true"])
    with pytest.raises(SystemExit) as exit_info:
        cli()
    assert str(exit_info.value.code).startswith("error: ") and "\n" not in str(exit_info.value.code)


def test_extending_a_finished_run_stretches_the_lr_cosine_to_the_new_end(tmp_path: Path) -> None:
    one = [*RUN, "trainer.max_epochs=1", "logger=csv", "optim.warmup_fraction=0", "optim.min_lr=0"]
    one.append("trainer.log_every_n_steps=1")
    first = train(compose_train(one, tmp_path))
    run_dir = Path(first["run_dir"])
    again = ["trainer.max_epochs=2", f"resume={run_dir}"]
    with pytest.raises(
        UserError, match=r"already finished.*To train it longer"
    ):  # same length: nothing to do
        resume_argv([f"resume={run_dir}"])
    assert resume_argv([f"resume={run_dir}", "trainer.max_epochs=2"])[-1] == f"hydra.run.dir={run_dir}"

    cfg = compose_train([*one, *again], tmp_path)
    metrics = train(cfg)
    assert json.loads((run_dir / "metrics.until_step3.json").read_text())["run_dir"] == str(run_dir)
    assert metrics["trainable_params"] == first["trainable_params"]
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    # LearningRateMonitor: one lr column per parameter group (and one for its weight decay)
    groups = [c for c in header if c.startswith("lr-") and not c.endswith(("-weight_decay", "-momentum"))]
    assert groups
    base = cfg.optim.lr
    for column in groups:
        lrs = {
            int(r[header.index("step")]): float(r[header.index(column)])
            for r in (row.split(",") for row in rows[1:])
            if r[header.index(column)]
        }
        # Steps 3..5 of a 6-step cosine (no warm-up, min_lr 0), not a restart from the base lr at step 3.
        assert lrs == pytest.approx({s: base * 0.5 * (1 + math.cos(math.pi * s / 6)) for s in range(3, 6)})
