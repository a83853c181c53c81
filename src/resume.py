"""``resume=true`` / ``resume=RUN_DIR``: continue a killed or preempted run in its own run dir.

Run dirs are timestamped, so the same command started again would get a new one. Before Hydra starts,
:func:`resume_argv` finds the run to continue and points ``hydra.run.dir`` at it:

* ``resume=true``: the most recently used run dir beside the one this command would create whose
  ``.hydra/overrides.yaml`` holds the same overrides (``resume=`` and ``hydra.*`` aside), i.e. the same
  command line in any order;
* ``resume=RUN_DIR``: that run, with the overrides it was started with; overrides given now are added after
  them (e.g. ``trainer.max_epochs=20`` to train a finished run longer: the lr cosine continues from where it
  stood to the new end, see :mod:`src.lr_schedule`; the finished run's metrics.json is kept aside).

Training then restarts from ``checkpoints/last.ckpt`` and keeps logging to the same MLflow run, whose id the
first start wrote to ``mlflow_run_id.txt``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, OmegaConf

from src.config import PROJECT_ROOT, register_resolvers
from src.errors import UserError
from src.tracking.mlflow_logger import MLflowLogger

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id.txt"
LAST = Path("checkpoints") / "last.ckpt"
OFF = {"false", "null", "none", ""}


def _task_overrides(args: Sequence[str]) -> list[str]:
    """The overrides that define a run: not flags, not ``hydra.*``, not ``resume=``."""
    return sorted(
        a for a in args if not a.startswith("-") and not a.startswith(("hydra.", "resume=", "+resume="))
    )


def _saved_overrides(run_dir: Path) -> list[str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    return list(OmegaConf.load(path)) if path.is_file() else None


def new_run_dir(args: Sequence[str], config_name: str = "train") -> Path:
    """The run dir Hydra would create for these overrides (its parent holds the earlier runs)."""
    overrides = [a for a in args if not a.startswith("-") and not a.startswith(("resume=", "+resume="))]
    register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except Exception as err:  # Hydra's composition errors name the bad override themselves
        raise UserError(f"resume=true: {err}") from None
    return Path(cfg.hydra.run.dir)


def find_run(args: Sequence[str], config_name: str = "train") -> Path:
    """The most recently used run dir started with the same overrides as ``args``."""
    pattern = new_run_dir(args, config_name)
    wanted = _task_overrides(args)
    runs = pattern.parent
    candidates = [d for d in runs.iterdir() if d.is_dir()] if runs.is_dir() else []
    saved = {d: _saved_overrides(d) for d in candidates}
    matching = [d for d, o in saved.items() if o is not None and _task_overrides(o) == wanted]
    if not matching:
        shown = " ".join(wanted) or "(no overrides)"
        raise UserError(
            f"resume=true: no run under {runs} was started with the overrides `{shown}`, so there is "
            "nothing to resume. Give the same overrides as the run to continue, or resume=RUN_DIR."
        )
    return max(matching, key=lambda d: (d / ".hydra" / "overrides.yaml").stat().st_mtime)


LENGTH_KEYS = ("trainer.max_epochs", "trainer.max_steps")


def check_resumable(run_dir: Path, extending: bool = False) -> Path:
    """``run_dir/checkpoints/last.ckpt``, or a clear error saying why this run cannot be resumed. A finished
    run (metrics.json) continues only when ``extending`` it (a new trainer.max_epochs / max_steps)."""
    if not run_dir.is_dir():
        raise UserError(f"resume={run_dir}: no such run dir.")
    if (run_dir / "metrics.json").is_file() and not extending:
        raise UserError(
            f"resume: the run in {run_dir} already finished (it has metrics.json); nothing to resume. "
            f"To train it longer: resume={run_dir} trainer.max_epochs=N (the lr cosine continues to the new "
            "end). Or start a new run without resume, or re-test it with python -m src.eval run_dir=..."
        )
    ckpt = run_dir / LAST
    if not ckpt.is_file():
        raise UserError(
            f"resume: the run in {run_dir} has no {LAST}; it stopped before its first checkpoint (see "
            "callbacks.last_checkpoint.every_n_train_steps). Start it again without resume."
        )
    return ckpt


def resume_argv(args: Sequence[str], config_name: str = "train") -> list[str]:
    """Rewrite a command line holding ``resume=...`` so that Hydra runs in the run dir it continues."""
    given = [a for a in args if a.startswith(("resume=", "+resume="))]
    value = given[-1].split("=", 1)[1] if given else ""
    if value.lower() in OFF:
        return list(args)
    if any(a in ("-m", "--multirun") for a in args):
        raise UserError("resume applies to one run: resume each sweep job with resume=<its job dir>.")
    rest = [a for a in args if a not in given]
    if value.lower() == "true":
        run_dir = find_run(rest, config_name)
        before: list[str] = []
    else:
        run_dir = Path(value).expanduser().resolve()
        extending = any(a.startswith(tuple(f"{k}=" for k in LENGTH_KEYS)) for a in rest)
        check_resumable(run_dir, extending)
        before = [o for o in _saved_overrides(run_dir) or [] if not o.startswith(("resume=", "+resume="))]
        given_keys = {a.split("=", 1)[0] for a in _task_overrides(rest)}
        before = [o for o in before if o.split("=", 1)[0] not in given_keys]
        return [*before, *rest, f"resume={run_dir}", f"hydra.run.dir={run_dir}"]
    check_resumable(run_dir)
    log.info("resuming %s", run_dir)
    return [*before, *rest, f"resume={run_dir}", f"hydra.run.dir={run_dir}"]


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint a composed config asks to continue from (``resume=RUN_DIR``; ``true``: its own dir)."""
    value = cfg.get("resume")
    if value is None or value is False or str(value).lower() in OFF:
        return None
    run_dir = Path(cfg.paths.output_dir) if value is True else Path(str(value))
    saved = run_dir / "config.yaml"
    extending = saved.is_file() and [OmegaConf.select(OmegaConf.load(saved), k) for k in LENGTH_KEYS] != [
        OmegaConf.select(cfg, k) for k in LENGTH_KEYS
    ]
    return check_resumable(run_dir, extending)


def set_aside_results(run_dir: Path, step: int | None) -> None:
    """Extending a finished run: its metrics.json becomes metrics.until_step<N>.json (kept, not replaced)."""
    done = run_dir / "metrics.json"
    if done.is_file():
        done.rename(done.with_name(f"metrics.until_step{step}.json"))


def read_run_id(run_dir: Path) -> str | None:
    path = run_dir / RUN_ID_FILE
    return path.read_text().strip() if path.is_file() else None


def write_run_id(run_dir: Path, run_id: str) -> None:
    (run_dir / RUN_ID_FILE).write_text(run_id + "\n")


def reopen_run(logger: MLflowLogger, step: int | None) -> None:
    """Mark a resumed MLflow run as running again (a kill left it RUNNING, SIGTERM KILLED, a crash FAILED)."""
    logger.experiment.update_run(logger.run_id, status="RUNNING")
    logger.experiment.set_tag(logger.run_id, "resumed_at_step", str(step))


def keep_csv_log(logger: Logger | None, step: int | None) -> Path | None:
    """Lightning's CSVLogger deletes an existing metrics.csv: keep the killed run's as metrics.until_stepN.csv."""
    if not isinstance(logger, CSVLogger):
        return None
    old = Path(logger.log_dir) / "metrics.csv"
    if not old.is_file():
        return None
    kept = old.with_name(f"metrics.until_step{step}.csv")
    old.rename(kept)
    return kept
