"""Subgroup attributes read from DICOM headers (RSNA Pneumonia, INbreast): ``PatientSex`` and
``PatientAge`` (``nnnY`` / ``nnnM`` / ``nnnW`` / ``nnnD``), header only, pixels never decoded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError


def dicom_subgroups(paths: Sequence[Path]) -> dict[str, list[str]]:
    """{"sex": [...], "age": [...]}, '' where a file lacks the tag or cannot be read."""
    sex, age = [], []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientSex", "PatientAge"])
        except (OSError, InvalidDicomError, ValueError):
            ds = None
        sex.append(str(getattr(ds, "PatientSex", "") or ""))
        age.append(str(getattr(ds, "PatientAge", "") or ""))
    return {"sex": sex, "age": age}
