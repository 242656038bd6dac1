"""When a trial evaluates: the evaluation schedules, one table.

Steps-to-result is only as fine as the evaluation cadence (Shallue et al.
2019, Sec. 3.1), so small step counts want dense evaluations; 'geometric'
gives them without evaluating every step of a long run.
"""

from __future__ import annotations

import bisect
import math

GEOMETRIC_RATIO = 2**0.25  # four evaluations per doubling of the step count


def _linear(max_steps: int, every: int) -> set[int]:
    return set(range(every, max_steps + 1, every))


def _geometric(max_steps: int, every: int) -> set[int]:
    """Dense early, GEOMETRIC_RATIO apart until that spacing reaches `every`, then every `every` steps."""
    steps, s = _linear(max_steps, every), 1.0
    while s * (GEOMETRIC_RATIO - 1) < every and s < max_steps:
        steps.add(math.ceil(s))
        s *= GEOMETRIC_RATIO
    return steps


EVAL_SCHEDULES = {"linear": _linear, "geometric": _geometric}


def evaluation_steps(config, every: int) -> list[int]:
    """Steps after which a trial (a TrialConfig) evaluates the validation set;
    step 0 is always evaluated, and so is the budget's last step."""
    return sorted(EVAL_SCHEDULES[config.eval_schedule](config.max_steps, every) | {config.max_steps})


def resolution(config, every: int, step: int) -> int:
    """Steps from the evaluation before `step` to `step`: a crossing seen at `step`
    lies in (step - resolution, step] (Shallue et al. 2019, Sec. 3.1)."""
    steps = evaluation_steps(config, every)
    i = bisect.bisect_left(steps, step)
    return step - (steps[i - 1] if i > 0 else 0)
