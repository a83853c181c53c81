"""What makes an MLflow 3 UI review easy: the experiment kind, run names, params without paths, datasets.

- MLflow 3 opens an experiment in its GenAI view (traces, token usage) unless the experiment tag
  ``mlflow.experimentKind`` says otherwise; ``custom_model_development`` opens the training view (runs,
  charts, artifacts) at once. An experiment a user tagged with another kind keeps it.
- Run names: the default run and a sweep's job with the same strategy, rank and seed were both
  ``lora_r4_s42``; a single run's name carries its start time, a sweep job's its job number.
- Params: machine-specific values (output paths, the tracking URI, the data root) would make every pair of
  runs differ in "compare" / "show diff only"; they are logged as tags ``local.<key>`` instead (the
  resolved ``config.yaml`` artifact keeps everything).
- Datasets: one ``mlflow.log_input``-style input per split (the Dataset column), named after the dataset,
  the cache entry's fingerprint (or, for data generated or read into memory, a hash of the dataset config)
  as digest, the split's size in the profile.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
# Flattened config keys whose values belong to this machine or this launch, not to the experiment.
MACHINE_KEYS = (
    "paths.*",
    "logger.*",
    "hydra.*",
    "*.dirpath",
    "trainer.default_root_dir",
    "dataset.root",
    "dataset.cache_dir",
    "dataset.csv",
    "dataset.split_dir",
    "export",
    "resume",
)
LOCAL_TAG_PREFIX = "local."
DIGEST_CHARS = 32  # MLflow stores at most 36


def mark_model_development(client: MlflowClient, experiment_id: str) -> None:
    """Tag the experiment so MLflow 3's UI opens its model-training view (unless another kind is set)."""
    experiment = client.get_experiment(experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)


def run_name(name: str | None, job: int | None = None, now: datetime | None = None) -> str | None:
    """``lora_r4_s42`` -> ``lora_r4_s42_job3`` in a sweep, ``lora_r4_s42_1130-163004`` otherwise."""
    if name is None:
        return None
    if job is not None:
        return f"{name}_job{job}"
    return f"{name}_{(now or datetime.now()):%m%d-%H%M%S}"


def is_machine_key(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in MACHINE_KEYS)


def split_params(flat: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(hyper-parameters, machine-specific values as ``local.<key>`` tags)."""
    params = {k: v for k, v in flat.items() if not is_machine_key(k)}
    local = {f"{LOCAL_TAG_PREFIX}{k}": v for k, v in flat.items() if is_machine_key(k)}
    return params, local


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def split_digest(dataset: Any, split: str, config: Mapping[str, Any]) -> str:
    """The cache entry's fingerprint (``<files>_<stamp>`` of ``<split>_<size>px_<color>_<files>_<stamp>``:
    the file list, their sizes and modification times); without a cache, a hash of the dataset config."""
    images = getattr(dataset, "images", None)  # CachedImageDataset: the entry's images.npy
    if isinstance(images, (str, Path)):
        return "".join(Path(images).parent.name.split("_")[-2:])[:DIGEST_CHARS]
    return _hash({"split": split, **config})[:DIGEST_CHARS]


def dataset_inputs(datasets: Mapping[str, Any], name: str, config: Mapping[str, Any]) -> list[DatasetInput]:
    """One input per split, tagged with MLflow's dataset context (train / val / test)."""
    source = str(config.get("root") or config.get("_target_") or name)
    inputs = []
    for split, dataset in datasets.items():
        entity = Dataset(
            name=name,
            digest=split_digest(dataset, split, config),
            source_type="local" if config.get("root") else "code",
            source=json.dumps({"uri": source}),
            profile=json.dumps({"num_rows": len(dataset), "split": split}),
        )
        inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, split)]))
    return inputs
