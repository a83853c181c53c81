"""Statistics for the numbers a run reports: intervals, paired tests, operating points, calibration.

* :mod:`.delong` — AUROC and the paired DeLong test (DeLong et al. 1988) in the fast midrank form of
  Sun & Xu (2014).
* :mod:`.bootstrap` — the paired, stratified case bootstrap, vectorised over resamples.
* :mod:`.holm` — Holm's step-down correction for a family of p-values.
* :mod:`.operating` — thresholds chosen on validation, applied to test, with Wilson intervals.
* :mod:`.calibration` — expected calibration error and reliability-diagram bins.
* :mod:`.predictions` — the ``predictions_*.csv`` format every run writes and :mod:`src.compare` reads.
* :mod:`.subgroups` — AUROC per subgroup (sex, age band, ...) and the largest gap.
"""
