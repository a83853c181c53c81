"""src.stats against independent references written here (O(m·n) DeLong, a per-resample loop, torchmetrics,
scikit-learn where installed, textbook formulas), and src.compare on runs with known answers."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torchmetrics.functional.classification import binary_auroc, binary_calibration_error, multilabel_auroc

from src.compare import check_same_cases, compare, compare_predictions
from src.compare import main as compare_main
from src.data.synthetic import SyntheticDataModule
from src.errors import UserError
from src.stats.bootstrap import (
    bootstrap_auroc,
    bootstrap_p,
    macro,
    multiplicities,
    percentile_ci,
    resample_indices,
    roc_band,
    single_label_strata,
)
from src.stats.calibration import ece, reliability_bins
from src.stats.delong import auroc, delong_test, delong_variance, midranks
from src.stats.holm import holm
from src.stats.operating import at_threshold, check_rule, choose_threshold, wilson
from src.stats.predictions import Predictions, from_task, read_predictions, write_predictions
from src.stats.run import split_predictions
from src.stats.subgroups import age_band, age_years, subgroup_metrics
from src.summary import format_summary
from src.tasks import Task
from src.train import train

RNG = np.random.default_rng(7)


def tied_scores(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two correlated score vectors rounded to one decimal, so ties abound."""
    label = (RNG.random(n) < 0.35).astype(int)
    a = np.round(label * 0.6 + RNG.random(n), 1)
    b = np.round(0.5 * a + 0.5 * (label * 0.3 + RNG.random(n)), 1)
    return label, a, b


def psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def delong_reference(a: np.ndarray, b: np.ndarray, label: np.ndarray) -> tuple[float, float, float]:
    """DeLong et al. (1988) straight from the definition: every (positive, negative) pair, O(m·n)."""
    pos, neg = label == 1, label == 0
    comps = []
    for s in (a, b):
        kernel = np.array([[psi(x, y) for y in s[neg]] for x in s[pos]])
        comps.append((kernel.mean(), kernel.mean(axis=1), kernel.mean(axis=0)))
    (auc_a, v10a, v01a), (auc_b, v10b, v01b) = comps
    m, n = pos.sum(), neg.sum()
    s10 = np.cov(np.stack([v10a, v10b]))
    s01 = np.cov(np.stack([v01a, v01b]))
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (auc_b - auc_a) / math.sqrt(var)
    return auc_a, auc_b, math.erfc(abs(z) / math.sqrt(2))


def test_delong_matches_the_pairwise_definition_with_ties() -> None:
    label, a, b = tied_scores(120)
    got = delong_test(a, b, label)
    auc_a, auc_b, p = delong_reference(a, b, label)
    assert got.auroc_a == pytest.approx(auc_a, abs=1e-12) and got.auroc_b == pytest.approx(auc_b, abs=1e-12)
    assert got.p == pytest.approx(p, rel=1e-9)
    kernel = np.array([[psi(x, y) for y in a[label == 0]] for x in a[label == 1]])
    v10, v01 = kernel.mean(axis=1), kernel.mean(axis=0)
    expected = v10.var(ddof=1) / len(v10) + v01.var(ddof=1) / len(v01)
    assert delong_variance(a, label) == pytest.approx(expected, rel=1e-9)


def test_auroc_matches_torchmetrics_and_sklearn() -> None:
    label, a, _ = tied_scores(200)
    assert auroc(a, label) == pytest.approx(
        float(binary_auroc(torch.tensor(a), torch.tensor(label))), abs=1e-6
    )
    sklearn = pytest.importorskip("sklearn.metrics")
    assert auroc(a, label) == pytest.approx(sklearn.roc_auc_score(label, a), abs=1e-12)
    assert math.isnan(auroc(a, np.ones_like(label)))


def test_bootstrap_equals_a_seeded_per_resample_loop() -> None:
    """Same draws, scored one resample at a time by torchmetrics: masked multilabel and stratified."""
    n, k = 90, 3
    labels = (RNG.random((n, k)) < 0.4).astype(float)
    labels[RNG.random((n, k)) < 0.1] = np.nan
    scores = [np.round(RNG.random((n, k)), 1), RNG.random((n, k))]
    got = bootstrap_auroc(scores, labels, n_boot=300, seed=3)
    drawn = np.concatenate(list(resample_indices(None, n, 300, 3)))
    assert drawn.shape == (300, n)
    for r, s in enumerate(scores):
        for i in range(0, 300, 37):
            rows = drawn[i]
            target = torch.tensor(np.nan_to_num(labels[rows], nan=-1)).long()
            ref = multilabel_auroc(
                torch.tensor(s[rows]), target, num_labels=k, average="none", ignore_index=-1
            )
            np.testing.assert_allclose(got[r, i], ref.numpy(), atol=1e-6)
    strata = (RNG.random(n) < 0.3).astype(int)
    for chunk in resample_indices(strata, n, 500, 1):
        assert (
            np.sort(strata[chunk], axis=1) == np.sort(strata)
        ).all()  # class counts kept in every resample
    counts = multiplicities(chunk, n)
    assert counts.shape == (n, len(chunk)) and (counts.sum(axis=0) == n).all()


def test_self_comparison_gives_zero_interval_and_p_one() -> None:
    label, a, _ = tied_scores(80)
    pred = from_task(
        [str(i) for i in range(80)], torch.tensor(a / 2), torch.tensor(label), "binary", ("no", "yes")
    )
    result = compare_predictions(pred, pred, n_boot=200)
    (cls,) = result["classes"].values()
    assert (cls["ci_low"], cls["ci_high"], cls["p_delong"], cls["p_bootstrap"]) == (0.0, 0.0, 1.0, 1.0)
    assert result["macro"]["delta"] == 0 and result["macro"]["p_bootstrap"] == 1.0


def test_a_clearly_better_run_is_significant_and_its_interval_excludes_zero() -> None:
    n = 400
    label = (RNG.random(n) < 0.5).astype(int)
    good, noise = label + RNG.normal(0, 0.5, n), RNG.random(n)
    pa = from_task([str(i) for i in range(n)], torch.tensor(noise), torch.tensor(label), "binary", ("a", "b"))
    pb = Predictions(pa.ids, pa.class_names, pa.labels, np.stack([1 - good, good], axis=1))
    result = compare_predictions(pa, pb, n_boot=500)
    assert result["macro"]["ci_low"] > 0 and result["classes"]["b"]["p_delong"] < 1e-6
    assert result["macro"]["p_bootstrap"] == pytest.approx(2 / 501)


def test_percentile_ci_p_value_and_holm() -> None:
    values = np.arange(1001, dtype=float)
    assert percentile_ci(values) == pytest.approx((25.0, 975.0))
    assert bootstrap_p(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(2 * 2 / 5)
    p = [0.01, 0.04, 0.03, math.nan, 0.005]
    # Holm by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone.
    assert holm(p)[:3] == pytest.approx([0.03, 0.06, 0.06]) and holm(p)[4] == pytest.approx(0.02)
    assert math.isnan(holm(p)[3])
    assert macro(np.array([[0.5, math.nan], [math.nan, math.nan]])).tolist()[0] == 0.5


def test_operating_points_against_brute_force_and_wilson_formula() -> None:
    label, score, _ = tied_scores(150)
    cands = np.unique(score)

    def rates(t: float) -> tuple[float, float]:
        called = score >= t
        return called[label == 1].mean(), (~called)[label == 0].mean()

    j = [sum(rates(t)) for t in cands]
    assert choose_threshold(score, label, "youden") == pytest.approx(
        cands[max(range(len(cands)), key=lambda i: (j[i], cands[i]))]
    )
    sens_ok = [t for t in cands if rates(t)[0] >= 0.9]
    assert choose_threshold(score, label, "sens@0.9") == max(sens_ok)
    spec_ok = [t for t in cands if rates(t)[1] >= 0.9]
    assert choose_threshold(score, label, "spec@0.9") == min(spec_ok)
    t = choose_threshold(score, label, "youden")
    result = at_threshold(score, label, t)
    tp = int(((score >= t) & (label == 1)).sum())
    assert result["sensitivity"][0] == pytest.approx(tp / label.sum())
    # Wilson (1927) for 8 / 10: centre (p + z²/2n) / (1 + z²/n) ± z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²)
    z = 1.959963984540054
    centre, half = (
        (0.8 + z * z / 20) / (1 + z * z / 10),
        z / (1 + z * z / 10) * math.sqrt(0.016 + z * z / 400),
    )
    assert wilson(8, 10) == pytest.approx((0.8, centre - half, centre + half))
    with pytest.raises(UserError, match="operating_point"):
        check_rule("sens90")


def test_ece_is_torchmetrics_and_bins_add_up() -> None:
    score, label = RNG.random(500), (RNG.random(500) < 0.3).astype(int)
    expected = binary_calibration_error(torch.tensor(score), torch.tensor(label), n_bins=15)
    assert ece(score, label) == pytest.approx(float(expected), abs=1e-6)
    conf, freq, count = reliability_bins(score, label)
    filled = count > 0
    assert count.sum() == 500
    assert np.sum(count[filled] * np.abs(freq[filled] - conf[filled])) / 500 == pytest.approx(
        float(expected), abs=1e-6
    )


def test_roc_band_holds_the_curve() -> None:
    label = (RNG.random(300) < 0.4).astype(int)
    score = label + RNG.normal(0, 1, 300)
    grid, lo, hi = roc_band(score, label, n_boot=200)
    assert grid[0] == 0 and grid[-1] == 1 and (lo <= hi).all() and hi[-1] == 1
    # The observed curve lies inside its band almost everywhere.
    pos, neg = score[label == 1], score[label == 0]
    observed = np.array(
        [max([(pos >= t).mean() for t in np.r_[score, np.inf] if (neg >= t).mean() <= g]) for g in grid]
    )
    assert np.mean((observed >= lo - 1e-9) & (observed <= hi + 1e-9)) > 0.9


def test_subgroups_bands_sex_and_gap() -> None:
    assert age_years("058Y") == 58 and age_years("006M") == 0.5 and math.isnan(age_years(""))
    assert [age_band(a, (40, 60, 80)) for a in (0.5, 39.9, 40, 79, 85)] == [
        "0-39",
        "0-39",
        "40-59",
        "60-79",
        "80 and over",
    ]
    n = 200
    label = (RNG.random(n) < 0.5).astype(int)
    sex = np.where(RNG.random(n) < 0.5, "Female", "M")
    score = np.where(sex == "M", label + RNG.normal(0, 0.3, n), RNG.random(n))  # informative for men only
    pred = from_task(
        [str(i) for i in range(n)],
        torch.tensor(1 / (1 + np.exp(-score))),
        torch.tensor(label),
        "binary",
        ("n", "p"),
    )
    out = subgroup_metrics(pred, {"sex": list(sex), "age": [""] * n}, n_boot=100)
    men, women = sex == "M", sex == "Female"
    assert out["test/subgroup/sex/M/auroc"] == pytest.approx(auroc(score[men], label[men]))
    assert out["test/subgroup/sex/F/n"] == women.sum()
    gap = auroc(score[men], label[men]) - auroc(score[women], label[women])
    assert out["test/subgroup/sex/auroc_gap"] == pytest.approx(gap)
    assert (
        out["test/subgroup/sex/M/auroc_ci_low"]
        < out["test/subgroup/sex/M/auroc"]
        < out["test/subgroup/sex/M/auroc_ci_high"]
    )
    assert not any(k.startswith("test/subgroup/age/") for k in out)  # every age unknown


def test_predictions_file_round_trips_and_compare_refuses_other_cases(tmp_path: Path) -> None:
    target = torch.tensor([[1, 0], [-1, 1], [0, 0]])
    scores = torch.tensor([[0.25, 0.5], [0.125, 0.75], [1 / 3, 0.1]], dtype=torch.float32)
    pred = from_task(["a.png", "b.png", "c.png"], scores, target, "multilabel", ("x", "y"))
    path = write_predictions(pred, tmp_path / "p.csv")
    assert path.read_text().splitlines()[:3] == [
        "id,target:x,target:y,score:x,score:y",
        "a.png,1,0,0.25,0.5",
        "b.png,,1,0.125,0.75",
    ]
    back = read_predictions(path)
    assert back.ids == pred.ids and np.array_equal(back.scores.astype(np.float32), scores.numpy())
    other = Predictions(["a.png", "x.png", "c.png"], back.class_names, back.labels, back.scores)
    with pytest.raises(UserError, match=r"row 2 is 'b.png' in the first and 'x.png'"):
        check_same_cases(back, other, "A", "B")
    with pytest.raises(UserError, match="3 test cases and B 2"):
        check_same_cases(back, back.subset(np.arange(2)), "A", "B")
    (tmp_path / "bad.csv").write_text("path,label\n")
    with pytest.raises(UserError, match="not a predictions file"):
        read_predictions(tmp_path / "bad.csv")


def test_compare_cli_writes_the_schema(tmp_path: Path, monkeypatch, capsys) -> None:
    n = 60
    label = np.arange(n) % 3
    ids = [f"img{i}.png" for i in range(n)]
    for name, noise in (("a", 2.0), ("b", 0.5)):
        logits = torch.tensor(np.eye(3)[label] + RNG.normal(0, noise, (n, 3)))
        run = tmp_path / name
        run.mkdir()
        write_predictions(
            from_task(ids, logits.softmax(1), torch.tensor(label), "multiclass", ("u", "v", "w")),
            run / "predictions_test.csv",
        )
    out = tmp_path / "c.json"
    argv = ["src.compare", f"runs=[{tmp_path / 'a'},{tmp_path / 'b'}]", "n_boot=200", f"out={out}"]
    monkeypatch.setattr(sys, "argv", argv)
    compare_main()  # as `python -m src.compare ...` runs it, in this process
    stdout = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert set(data["classes"]) == {"u", "v", "w"}
    assert set(data["classes"]["u"]) >= {"auroc_a", "auroc_b", "delta", "ci_low", "ci_high", "p_delong"}
    assert set(data["macro"]) >= {"auroc_a", "auroc_b", "delta", "ci_low", "ci_high", "p_bootstrap"}
    assert "macro" in stdout and "(bootstrap)" in stdout
    monkeypatch.setattr(sys, "argv", [*argv[:1], f"runs=[{tmp_path / 'a'}]"])
    with pytest.raises(SystemExit, match="give exactly two runs"):
        compare_main()
    cfg = OmegaConf.create(
        {"runs": [str(tmp_path / "a"), str(tmp_path)], "n_boot": 10, "seed": 0, "ci": 0.95}
    )
    with pytest.raises(UserError, match=r"has no predictions_test\.csv"):
        compare(cfg)


def test_predictions_are_paired_with_ids_only_in_dataset_order() -> None:
    dm = SyntheticDataModule(
        name="s", root=None, image_size=16, mean=[0.5] * 3, std=[0.5] * 3, sizes={"test": 12}, task="binary"
    )
    task = Task(dm.task_type, dm.class_names)
    target = dm.split_targets("test")
    scores = torch.rand(12)
    pred = split_predictions(dm, "test", (scores, target.int()), task)
    assert pred.ids == [str(i) for i in range(12)] and np.array_equal(pred.labels[:, 1], target.numpy())
    assert split_predictions(dm, "test", (scores[:8], target[:8].int()), task).ids == pred.ids[:8]  # limited
    order = torch.argsort(target, stable=True)  # e.g. shards gathered rank by rank under DDP
    assert not torch.equal(order, torch.arange(12))
    assert split_predictions(dm, "test", (scores[order], target[order].int()), task) is None


def test_closing_summary_shows_the_test_auroc_interval() -> None:
    base = {"trainable_params": 1, "total_params": 2, "trainable_pct": 50.0, "adapter_bytes": 10}
    base |= {"adapter_path": "a", "run_dir": "r", "test/auroc": 0.9, "val/auroc": 0.8}
    text = format_summary(base | {"test/auroc_ci_low": 0.85, "test/auroc_ci_high": 0.95})
    assert "0.9000  [0.8500, 0.9500] 95 % bootstrap CI" in text
    assert "0.8000\n" in format_summary(base)  # val: no interval, none shown


def test_midranks_share_tied_ranks() -> None:
    assert midranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stats.n_boot=0", "stats.n_boot=0"),
        ("stats.ci=95", "stats.ci=95"),
        ("task.operating_point=sens90", "operating_point"),
    ],
)
def test_bad_statistics_options_fail_before_training(override: str, message: str, make_cfg) -> None:
    with pytest.raises(UserError, match=message):
        train(make_cfg(override))


def test_single_label_tasks_are_stratified_by_class() -> None:
    binary = np.array([[1.0], [0.0], [1.0]])  # a binary task's positive-class column
    assert single_label_strata(binary).tolist() == [1, 0, 1]
    assert single_label_strata(np.eye(3)[[2, 0, 1, 2]]).tolist() == [2, 0, 1, 2]
    assert single_label_strata(np.array([[1.0, 1.0], [0.0, 1.0]])) is None  # multilabel
    assert single_label_strata(np.array([[1.0], [np.nan]])) is None


def test_unreachable_specificity_calls_nobody_positive() -> None:
    label = np.array([1, 0, 0, 1])
    score = np.array([0.9, 0.9, 0.9, 0.1])  # every negative ties with the top score
    assert choose_threshold(score, label, "spec@0.9") == math.inf
    assert at_threshold(score, label, math.inf)["specificity"][0] == 1.0
