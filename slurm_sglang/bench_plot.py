"""The picture of a bench report: latency and throughput against each swept axis.

Imports the standard library and matplotlib only (matplotlib is optional: the `plot` extra),
so that the python that runs sglang's client can draw it when the CLI's python cannot.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slurm_sglang.errors import UserInputError

_AXIS_NAMES = {"concurrency": "max concurrency", "prefill": "input tokens",
               "decode": "output tokens"}


def plot_summary(data: Mapping[str, Any], path: Path) -> Path:
    """Latency and throughput against each swept axis of a report (its JSON form), one column
    per type."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserInputError("--plot: needs matplotlib, which is not installed here "
                             "(pip install 'slurm-sglang[plot]')") from None
    runs = [run for run in data["runs"] if run["ok"] and run["x"] is not None]
    swept = [name for name in _AXIS_NAMES if any(run["type"] == name for run in runs)]
    if not swept:
        raise UserInputError("--plot: no valid run of concurrency, prefill or decode to draw")
    figure, axes = plt.subplots(2, len(swept), figsize=(5.5 * len(swept), 7), squeeze=False)
    for column, name in enumerate(swept):
        points = sorted((run for run in runs if run["type"] == name), key=lambda run: run["x"])
        xs = [run["x"] for run in points]
        top, bottom = axes[0][column], axes[1][column]
        for key, style in (("median_ttft_ms", "o-"), ("p99_ttft_ms", "o--"),
                           ("median_itl_ms", "s-"), ("median_e2e_latency_ms", "^-")):
            top.plot(xs, [run["result"].get(key) for run in points], style,
                     label=key.removesuffix("_ms"))
        top.set_ylabel("ms")
        top.set_title(f"{name}: latency")
        top.legend(fontsize=8)
        for key, style in (("output_throughput", "o-"), ("total_throughput", "s--")):
            bottom.plot(xs, [run["result"].get(key) for run in points], style, label=key)
        bottom.set_ylabel("tokens/s")
        bottom.set_xlabel(_AXIS_NAMES[name])
        bottom.set_title(f"{name}: throughput")
        bottom.legend(fontsize=8)
        for axis in (top, bottom):
            # Sweeps grow by factors (1, 4, 16...): a log axis spaces them evenly.
            if len(xs) > 2 and max(xs) / max(min(xs), 1) >= 16:
                axis.set_xscale("log", base=2)
                axis.set_xticks(xs, [f"{x:g}" for x in xs])
            axis.grid(True, alpha=0.3)
    figure.suptitle(f"sglang serving benchmark, {data['url']} ({data['started']})", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
