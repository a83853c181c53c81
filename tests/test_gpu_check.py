"""bench/gpu_check.py's CPU parts: every section runs on the pocket model and lands in one results file."""

from __future__ import annotations

import sys
from pathlib import Path

from src.config import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
import gpu_check


def test_every_section_runs_on_the_cpu_and_writes_one_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    args = ["--device", "cpu", "--tiny", "--strategies", "linear", "--arms", "lora_qv", "--batch", "4"]
    args += ["--warmup", "1", "--steps", "1", "--images", "8", "--saves", "1"]
    assert gpu_check.main(args) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["gpu_check.md"]
    text = (tmp_path / "gpu_check.md").read_text()
    assert text.startswith("# GPU check on CPU")
    assert "## fast_dev_run of every strategy, bf16-mixed: ok" in text and "| linear | 0." in text
    assert "## sparse delta layer on the device vs CPU and a dense fp64 reference: ok" in text
    assert "## 2-GPU DDP: skipped" in text
    row = next(line for line in text.splitlines() if line.startswith("| lora_qv |"))
    fed, memory = (float(cell.replace(",", "")) for cell in row.split("|")[2:4])
    assert fed > 0 and memory > 0 and row.rstrip(" |").endswith(("loader", "model"))
    assert "## checkpoint saves on the device, lean vs whole: ok" in text
    lean_mb, whole_mb = (
        float(c) for c in next(x for x in text.splitlines() if x.startswith("| lora |")).split("|")[2:4]
    )
    assert 0 < lean_mb < whole_mb / 5


def test_a_failing_section_is_recorded_and_the_rest_still_run(tmp_path: Path, monkeypatch) -> None:
    def broken(*_):
        raise RuntimeError("no kernel image is available")

    monkeypatch.setattr(gpu_check, "section_sparse", broken)
    out = tmp_path / "r.md"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--sections", "sparse,ddp", "--out", str(out)]) == 1
    text = out.read_text()
    assert "vs CPU and a dense fp64 reference: FAILED: RuntimeError: no kernel image is available" in text
    assert "## 2-GPU DDP: skipped" in text


def test_the_time_guard_skips_what_no_longer_fits(tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    assert (
        gpu_check.main(["--device", "cpu", "--tiny", "--budget", "5", "--sections", "fdr", "--out", str(out)])
        == 0
    )
    assert "fast_dev_run of every strategy, bf16-mixed: skipped" in out.read_text()
