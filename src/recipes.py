"""Small value rules the paper recipes (conf/experiment/) use as config resolvers (registered in src/config.py).

Resolvers must not raise (OmegaConf would wrap the error unreadably), so these are total functions.
"""

from __future__ import annotations

from typing import Any


def linear_scaled_lr(lr: float, batch_size: int, reference_batch: int | None = 256) -> float:
    """MAE's convention ``lr = blr * batch / 256`` (Goyal et al., 2017); ``reference_batch=None``: ``lr`` as is."""
    return float(lr) if reference_batch is None else float(lr) * int(batch_size) / int(reference_batch)


def when_null(value: Any, if_null: Any, otherwise: Any) -> Any:
    """``if_null`` when ``value`` is null, else ``otherwise``: e.g. a label fraction that applies only when no
    pre-made subset list (MED-PEFT's ``train_1.txt``) is given."""
    return if_null if value is None else otherwise
