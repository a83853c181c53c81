"""Lightning DDP for real, on 2 CPU processes (gloo), launched as a user would with the default MLflow logger:
one FINISHED MLflow run, every val/test sample scored exactly once, the same sparse positions on both ranks
as one process would choose, and a kill -9 mid-epoch + resume=true that ends as the uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import mlflow
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from src.config import PROJECT_ROOT, instantiate_user
from src.eval import evaluate
from src.models.module import ClassificationModule
from src.tasks import Task
from src.train import build_model, build_trainer
from tests.conftest import compose_train

CPU_DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
# Odd val / test sizes, so DistributedSampler pads both shards; 3 steps per process per epoch, 2 epochs;
# last.ckpt every 2 steps, so a kill at step 5 resumes from the mid-epoch checkpoint of step 4.
RUN = [
    "peft=sparse",
    "dataset.sizes.train=24",
    "dataset.sizes.val=13",
    "dataset.sizes.test=11",
    "dataset.batch_size=4",
    "trainer.max_epochs=2",
    "callbacks.last_checkpoint.every_n_train_steps=2",
]
TEST_SIZE = 11
# Lightning's warnings about a loader that cannot resume mid-epoch and unreduced epoch-level logging under
# DDP are errors in the launched processes (as in pyproject.toml's filterwarnings for this one).
FAIL_ON = ",".join(
    [
        "ignore",
        "error:You're resuming from a checkpoint that ended before the epoch ended:UserWarning",
        "error:It is recommended to use `self.log:UserWarning",
    ]
)


def launch(*args: str) -> subprocess.CompletedProcess:
    """``python -m src.train`` in its own process group (a group kill must not reach pytest)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": FAIL_ON, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "src.train", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )


def probe(d: Path) -> list[str]:
    return ["+callbacks.probe._target_=tests.ddp_probe.Probe", f"+callbacks.probe.dir={d}"]


def one_run(log_dir: Path) -> Path:
    (run_dir,) = (log_dir / "train" / "runs").iterdir()
    return run_dir


def scores(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))}


def finished_runs(log_dir: Path) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{log_dir}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    log_dir = tmp_path_factory.mktemp("ddp")
    result = launch(*CPU_DDP, *RUN, f"paths.log_dir={log_dir}", *probe(log_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return log_dir, json.loads((one_run(log_dir) / "metrics.json").read_text())


def test_ddp_mlflow_sparse_scores_every_test_sample_once(uninterrupted) -> None:
    log_dir, metrics = uninterrupted
    (run,) = finished_runs(log_dir)  # rank 1 neither crashed nor opened a run of its own
    assert run.info.status == "FINISHED" and run.info.run_id == metrics["mlflow_run_id"]

    # Both ranks trained the positions one process selects from the same data and seed.
    rank0, rank1 = (torch.load(log_dir / f"rank{r}_sparse.pt") for r in (0, 1))
    cfg = compose_train([*RUN, "logger=none"], log_dir / "single")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = instantiate_user(cfg.dataset)
    dm.shuffle_seed = cfg.seed
    dm.setup("fit")
    task = Task(dm.task_type, dm.class_names, 0.0)
    model, strategy = build_model(cfg, task)
    strategy.prepare(model, dm.train_dataloader(single_process=True), task.loss, "cpu")
    assert torch.equal(rank0, rank1) and torch.equal(rank0, model.sparse_delta.indices)

    # Every test image once (11, not the 12 of two padded shards of 6), the same on both ranks.
    (s0, y0), (s1, y1) = (torch.load(log_dir / f"rank{r}_test.pt") for r in (0, 1))
    assert len(s0) == len(y0) == TEST_SIZE and torch.equal(s0, s1) and torch.equal(y0, y1)
    assert float(binary_auroc(s0, y0.long())) == pytest.approx(metrics["test/auroc"], abs=1e-6)
    # ...and they equal one process testing the same checkpoint (src.eval, batches of another make-up).
    now, logged = evaluate(one_run(log_dir))
    assert now == pytest.approx({k: v for k, v in logged.items() if k in now}, abs=1e-5)
    dm.setup("test")  # in dataset order
    assert torch.equal(y0, task.metric_target(dm.datasets["test"].targets))


def test_ddp_kill_9_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path: Path, uninterrupted) -> None:
    _, reference = uninterrupted
    kill = [
        "+callbacks.kill._target_=tests.kill_switch.KillAtStep",
        "+callbacks.kill.step=5",
        f"+callbacks.kill.marker={tmp_path / 'killed'}",
        "+callbacks.kill.group=true",
    ]
    command = [*CPU_DDP, *RUN, f"paths.log_dir={tmp_path}", *kill]
    killed = launch(*command)
    assert killed.returncode == -9, killed.stderr[-3000:]
    run_dir = one_run(tmp_path)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4

    resumed = launch(*command, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert scores(metrics) == scores(reference)  # bit-identical
    assert Path(metrics["best_checkpoint"]).name == Path(reference["best_checkpoint"]).name
    (run,) = finished_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_at_step"] == "4"


def test_ddp_spawn_two_cpu_processes(make_cfg) -> None:
    cfg = make_cfg(*CPU_DDP, "debug=fdr", "trainer.strategy=ddp_spawn", "callbacks=none")
    dm = instantiate_user(cfg.dataset)
    task = Task(dm.task_type, dm.class_names, 0.0)
    model, _ = build_model(cfg, task)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = build_trainer(cfg)
    trainer.fit(ClassificationModule(model, task, dict(cfg.optim)), datamodule=dm)
    assert trainer.world_size == 2
    assert 0.0 <= float(trainer.callback_metrics["val/auroc"]) <= 1.0  # synced over both processes
    # The step ran in the spawned processes; Lightning hands the trained weights back to this one.
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed)
