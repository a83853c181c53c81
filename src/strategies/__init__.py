"""PEFT strategies: each decides which weights of a timm classifier train (one module + one YAML each)."""

from src.strategies.base import Strategy, count_parameters

__all__ = ["Strategy", "count_parameters"]
