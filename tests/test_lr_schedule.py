"""The lr schedule: warm-up + cosine over the run's steps, saved with the scheduler, and stretched to the new
end (not restarted from the base lr) when a resumed run is given more epochs."""

from __future__ import annotations

import math

import pytest
import torch

from src.errors import UserError
from src.lr_schedule import start_schedule, warmup_cosine_scheduler


def reference(step: int, total: int, warmup: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min((step - warmup) / (total - warmup), 1.0)))


def run(scheduler: torch.optim.lr_scheduler.LambdaLR, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def make() -> torch.optim.lr_scheduler.LambdaLR:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return warmup_cosine_scheduler(opt, min_lr=0.001, warmup_fraction=0.2)


def test_schedule_is_warmup_cosine_over_the_steps_known_at_train_start() -> None:
    sched = make()
    assert not start_schedule(sched, total=10, max_epochs=2)
    assert run(sched, 10) == pytest.approx([0.1 * reference(s, 10, 2, 0.01) for s in range(10)])


def test_a_resumed_run_keeps_its_schedule_and_a_longer_one_stretches_it() -> None:
    first = make()
    start_schedule(first, total=10, max_epochs=2)
    assert run(first, 6) == pytest.approx([0.1 * reference(s, 10, 2, 0.01) for s in range(6)])
    state = first.state_dict()

    resumed = make()  # a new process: the length comes back with the scheduler's state
    resumed.load_state_dict(state)
    assert not start_schedule(resumed, total=10, max_epochs=2)
    assert run(resumed, 4) == pytest.approx([0.1 * reference(s, 10, 2, 0.01) for s in range(6, 10)])

    extended = make()
    extended.load_state_dict(state)
    assert start_schedule(extended, total=20, max_epochs=4)  # trainer.max_epochs 2 -> 4: stretched
    lrs = run(extended, 14)
    assert lrs == pytest.approx([0.1 * reference(s, 20, 2, 0.01) for s in range(6, 20)])
    assert lrs[-1] == pytest.approx(0.1 * reference(19, 20, 2, 0.01)) and lrs[-1] < lrs[0]

    shorter = make()
    shorter.load_state_dict(state)
    with pytest.raises(UserError, match=r"at step 6, but this config ends it after 5 steps"):
        start_schedule(shorter, total=5, max_epochs=1)
