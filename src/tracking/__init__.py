"""Experiment tracking: the MLflow logger and the artifacts a run leaves behind."""
