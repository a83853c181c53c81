"""Where MLflow data goes: a local sqlite store or a tracking server, checked before any heavy work.

MLflow's HTTP client retries a dead server with exponential back-off for minutes; a run that only finds
out after building data and model wastes that time and then dies with a long traceback. So the server is
probed once, quickly, at start: unreachable -> a :class:`UserError` naming ``logger.tracking_uri``, or,
with ``logger.fallback=csv``, a warning and CSV logging into the run dir.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request

from omegaconf import DictConfig, open_dict

from src.errors import UserError

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 5.0
FALLBACKS = (None, "csv")
CSV_LOGGER = {
    "_target_": "lightning.pytorch.loggers.CSVLogger",
    "save_dir": "${paths.output_dir}",
    "name": "csv",
    "version": "",
}


def is_remote(uri: str | None) -> bool:
    """A tracking server (HTTP), as opposed to a file or database store this process opens itself."""
    return bool(uri) and str(uri).split("://", 1)[0].lower() in ("http", "https")


def is_mlflow_logger(logger_cfg: DictConfig | None) -> bool:
    return bool(logger_cfg) and "tracking_uri" in logger_cfg


def probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the server answers its ``/health`` endpoint, else why it could not be reached."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            if response.status == 200:
                return None
            return f"HTTP {response.status} from {uri}/health"
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code} from {uri}/health"
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def check_tracking(cfg: DictConfig) -> DictConfig:
    """Probe an HTTP tracking server; on failure raise, or switch ``cfg.logger`` to CSV if asked to.

    Returns ``cfg`` (changed in place only for the CSV fallback).
    """
    logger_cfg = cfg.get("logger")
    if not is_mlflow_logger(logger_cfg):
        return cfg
    fallback = logger_cfg.get("fallback")
    if fallback not in FALLBACKS:
        raise UserError(
            f"logger.fallback={fallback!r} is not supported; use `logger.fallback=csv` (log to CSV in the "
            "run dir when the tracking server cannot be reached) or leave it null (stop with an error)."
        )
    uri = logger_cfg.tracking_uri
    if not is_remote(uri):
        return cfg
    reason = probe(uri)
    if reason is None:
        return cfg
    if fallback == "csv":
        log.warning("MLflow server %s unreachable (%s): logging to CSV in the run dir instead", uri, reason)
        with open_dict(cfg):
            cfg.logger = dict(CSV_LOGGER)
        return cfg
    raise UserError(
        f"the MLflow tracking server at logger.tracking_uri={uri} cannot be reached ({reason}). Start it "
        "(`make mlflow-server`), fix logger.tracking_uri, or pass `logger.fallback=csv` to log to CSV "
        "files in the run dir when the server is down."
    )
