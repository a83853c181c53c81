"""Lightning's MLFlowLogger, without its silent cut of parameter values at 250 characters.

MLflow itself accepts values up to ``MAX_PARAM_VAL_LENGTH`` (6,000 characters since MLflow 2). Longer values
are cut there with a visible marker and a warning, and the full resolved config is always an artifact.

Inside a Hydra multirun whose sweep callback opened a parent run (:mod:`src.tracking.sweep`), the run joins
the sweep's experiment as a child of that parent, tagged with the sweep id and job number.

For the MLflow 3 UI (:mod:`src.tracking.review`): the experiment is tagged as model development, run
names are distinct (start time, or sweep job number), machine-specific config values are tags ``local.*``
rather than params, and the data splits are logged as dataset inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from src.config import flatten
from src.tracking.git import git_tags
from src.tracking.review import dataset_inputs, mark_model_development, run_name, split_params
from src.tracking.server import is_remote
from src.tracking.sweep_context import current_sweep

log = logging.getLogger(__name__)
MARKER = " ...[cut: see config.yaml artifact]"


def param_value(key: str, value: Any) -> str:
    text = str(value)
    if len(text) <= MAX_PARAM_VAL_LENGTH:
        return text
    log.warning("param %s has %d characters; MLflow keeps %d", key, len(text), MAX_PARAM_VAL_LENGTH)
    return text[: MAX_PARAM_VAL_LENGTH - len(MARKER)] + MARKER


def run_tags(tags: dict[str, Any] | None) -> dict[str, str]:
    """Config tags as strings, without the unset ones (a dataset without folds has no ``fold`` tag)."""
    return {**{k: str(v) for k, v in (tags or {}).items() if v is not None}, **git_tags()}


class MLflowLogger(MLFlowLogger):
    def __init__(
        self,
        *args: Any,
        tags: dict[str, Any] | None = None,
        artifact_location: str | None = None,
        fallback: str | None = None,
        **kwargs: Any,
    ) -> None:
        """As Lightning's, plus ``fallback`` (handled before the logger is built, see ``check_tracking``).

        ``artifact_location`` applies to local stores only: a tracking server stores artifacts itself.
        """
        del fallback
        tags = run_tags(tags)
        sweep = current_sweep()
        if sweep is not None:
            kwargs["experiment_name"] = sweep.experiment_name
            kwargs["tracking_uri"] = sweep.tracking_uri
            tags |= {MLFLOW_PARENT_RUN_ID: sweep.parent_run_id, **sweep.job_tags()}
        kwargs["run_name"] = run_name(kwargs.get("run_name"), sweep.job_num if sweep else None)
        if is_remote(kwargs.get("tracking_uri")):
            artifact_location = None
        super().__init__(*args, tags=tags, artifact_location=artifact_location, **kwargs)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Any) -> None:
        flat = flatten(params) if isinstance(params, dict) else flatten(vars(params))
        hparams, local = split_params(flat)
        mark_model_development(self.experiment, self.experiment_id)
        batch = [Param(key=k, value=param_value(k, v)) for k, v in hparams.items()]
        for i in range(0, len(batch), 100):  # MLflow's log_batch takes at most 100 params
            self.experiment.log_batch(run_id=self.run_id, params=batch[i : i + 100])
        tags = [RunTag(k, param_value(k, v)) for k, v in local.items()]
        for i in range(0, len(tags), 100):
            self.experiment.log_batch(run_id=self.run_id, tags=tags[i : i + 100])

    @rank_zero_only
    def log_datasets(self, datasets: dict[str, Any], name: str, config: dict[str, Any]) -> None:
        """The data splits as dataset inputs (MLflow's Dataset column); see :mod:`src.tracking.review`."""
        self.experiment.log_inputs(self.run_id, datasets=dataset_inputs(datasets, name, config))

    @rank_zero_only
    def log_files(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        for path in paths:
            self.experiment.log_artifact(self.run_id, str(path), artifact_path)
