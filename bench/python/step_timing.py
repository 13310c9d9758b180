"""The timing both PyTorch training twins share (train_torch.py, train_stage2_torch.py), so their figures are taken
the same way as each other and as bench_train's: warm-up steps, then per timed step the wall and CPU time, the
median, the process's peak RSS; with `split`, forward + backward alone and the update alone."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def ema_decay(step: int, max_decay: float = 0.999) -> float:
    """The reference's EMA decay with update_after_step 0, as marvel's ema.rs applies it at optimizer step `step`."""
    s = step - 1
    return 0.0 if s <= 0 else min((1 + s) / (10 + s), max_decay)


def time_training(step: Callable[[int], float], warmup: int, runs: int, split: bool,
                  gradients: Callable[[], None], update: Callable[[int], None]) -> dict:
    """`step(i)` runs optimizer step i and returns its loss; `gradients()` one forward + backward; `update(i)` the
    update of step i (clipping, AdamW, EMA) with the gradients already there."""
    losses = [step(i) for i in range(warmup)]
    times, cpu = [], []
    for i in range(warmup, warmup + runs):
        t, c = time.perf_counter(), time.process_time()
        losses.append(step(i))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    med = statistics.median(times)
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    extra = {}
    if split:
        grads = []
        for _ in range(runs):
            t = time.perf_counter()
            gradients()
            grads.append(time.perf_counter() - t)
        extra["gradients_s"] = round(statistics.median(grads), 4)
        # The update alone with the last pass's gradients, as bench_train's update_s.
        upd, upd_cpu = [], []
        for i in range(runs):
            t, c = time.perf_counter(), time.process_time()
            update(warmup + runs + i)
            upd.append(time.perf_counter() - t)
            upd_cpu.append(time.process_time() - c)
        extra["update_s"] = round(statistics.median(upd), 4)
        extra["update_cpu_s"] = round(statistics.median(upd_cpu), 4)
    return {
        "median_s": round(med, 4), "steps_per_s": round(1 / med, 4),
        "cpu_s": round(statistics.median(cpu), 2), "runs": [round(t, 4) for t in times],
        "losses": [round(l, 5) for l in losses], "peak_rss_mib": round(int(hwm.split()[1]) / 1024, 1), **extra,
    }
