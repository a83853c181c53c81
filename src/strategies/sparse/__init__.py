"""``peft=sparse``: SH-PEFT-style importance-selected sparse fine-tuning (see :mod:`.strategy`)."""

from src.strategies.sparse.strategy import Sparse

__all__ = ["Sparse"]
