"""Lightning's model summary without its FLOPs column and "Total FLOPs: 0" line when it counted none.

Lightning counts FLOPs only for a module with an ``example_input_array``; ours have none, so every run
printed a column of zeros and "Total FLOPs: 0", which reads like a measurement. The text table (rather
than the rich one) also stays readable in a log file.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

log = logging.getLogger(__name__)


class QuietModelSummary(ModelSummary):
    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if not total_flops:
            summary_data = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(
            total_parameters,
            trainable_parameters,
            model_size,
            total_training_modes,
            total_flops,
            *summary_data,
        )
        if not total_flops:
            table = table.rsplit("\n", 1)[0]  # the "Total Flops" line
        log.info("model summary:\n%s", table)
