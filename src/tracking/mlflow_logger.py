"""Lightning's MLFlowLogger, without its silent cut of parameter values at 250 characters.

MLflow itself accepts values up to ``MAX_PARAM_VAL_LENGTH`` (6,000 characters since MLflow 2). Longer values
are cut there with a visible marker and a warning, and the full resolved config is always an artifact.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Param
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from src.config import flatten

log = logging.getLogger(__name__)
MARKER = " ...[cut: see config.yaml artifact]"


def param_value(key: str, value: Any) -> str:
    text = str(value)
    if len(text) <= MAX_PARAM_VAL_LENGTH:
        return text
    log.warning("param %s has %d characters; MLflow keeps %d", key, len(text), MAX_PARAM_VAL_LENGTH)
    return text[: MAX_PARAM_VAL_LENGTH - len(MARKER)] + MARKER


class MLflowLogger(MLFlowLogger):
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Any) -> None:
        flat = flatten(params) if isinstance(params, dict) else flatten(vars(params))
        batch = [Param(key=k, value=param_value(k, v)) for k, v in flat.items()]
        for i in range(0, len(batch), 100):  # MLflow's log_batch takes at most 100 params
            self.experiment.log_batch(run_id=self.run_id, params=batch[i : i + 100])

    @rank_zero_only
    def log_files(self, paths: Iterable[str | Path]) -> None:
        for path in paths:
            self.experiment.log_artifact(self.run_id, str(path))
