"""One PNG per scenario: demand, capacity per capacity group and queue over time, one panel
per policy (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.sim.record import Series

__all__ = ["plot_scenario"]


def plot_scenario(title: str, series: Mapping[str, Series], path: Path) -> None:
    """Write ``path``: a panel per policy, sharing the time axis (hours)."""
    fig, axes = plt.subplots(len(series), 1, figsize=(12, 2.3 * len(series)), sharex=True)
    for ax, (policy, s) in zip(axes, series.items(), strict=True):
        hours = [t / 3600.0 for t in s.t]
        top = [a + b for a, b in zip(s.on_demand_slots, s.preemptible_slots, strict=True)]
        ax.fill_between(
            hours,
            0,
            s.on_demand_slots,
            step="post",
            color="#4c72b0",
            alpha=0.5,
            label="on-demand slots",
            linewidth=0,
        )
        ax.fill_between(
            hours,
            s.on_demand_slots,
            top,
            step="post",
            color="#dd8452",
            alpha=0.5,
            label="preemptible slots",
            linewidth=0,
        )
        ax.step(hours, s.demand, where="post", color="black", linewidth=0.7, label="demand")
        ax.step(hours, s.queued, where="post", color="#c44e52", linewidth=0.9, label="queued")
        ax.set_ylabel("streams")
        ax.set_title(policy, fontsize=9, loc="left")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1].set_xlabel("hours")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
