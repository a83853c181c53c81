"""The git commit of the code that ran: MLflow's ``mlflow.source.git.commit`` tag and ``git_dirty``."""

from __future__ import annotations

import functools
import shutil
import subprocess

from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

from src.config import PROJECT_ROOT


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def git_tags() -> dict[str, str]:
    """HEAD of the checkout this code runs from and whether tracked files differ from it; empty when it is
    not a git checkout (an installed wheel, an exported tree) or git is missing."""
    if shutil.which("git") is None:
        return {}
    head = _git("rev-parse", "HEAD")
    if not head:
        return {}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {MLFLOW_GIT_COMMIT: head, "git_dirty": str(bool(status)).lower()}
