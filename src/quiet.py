"""Silence, by exact message, the library output a user can do nothing about; nothing else.

Each entry names one message and why it is noise here. Warnings that could matter (a deprecation in our
own code, a data loader with too few workers, a metric computed on one class) stay visible: there is no
blanket filter by category or module.
"""

from __future__ import annotations

import logging
import warnings

NOISE_WARNINGS = (
    # src.eval tests a checkpoint with a bare Trainer: the training callbacks saved in it (best / last
    # checkpoint) have nothing to restore when only the test runs.
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided",
    # Lightning 2.6's own call into torch's pytree API, fixed upstream; nothing in our code or config.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
NOISE_LOG_PREFIXES = (
    # Lightning's adverts for its cloud services, logged at INFO when a Trainer is built.
    "💡 Tip: For seamless cloud",
    # conf/callbacks/console.yaml's QuietModelSummary replacing Lightning's default: as intended.
    "Trainer already configured with model summary callbacks",
)
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"


class DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def silence_noise() -> None:
    """Install the filters (idempotent); the entry points call it before building a Trainer."""
    for message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    if not any(isinstance(f, DropPrefixes) for f in logger.filters):
        logger.addFilter(DropPrefixes(NOISE_LOG_PREFIXES))
