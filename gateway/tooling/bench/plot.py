"""The stepped bench's PNG: CPU per call-second and forwarding-delay percentiles against concurrent calls."""

from __future__ import annotations

from typing import Any


def plot_steps(data: dict[str, Any], path: str) -> str:
    from gateway.extras import require

    matplotlib = require("plots", "gateway bench's PNG")  # matplotlib: the plots extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = _median_rounds(data["results"])
    targets = list(dict.fromkeys(r["target"] for r in results))
    fig, (cpu_ax, in_ax, out_ax) = plt.subplots(1, 3, figsize=(15, 4.5))
    for target in targets:
        rows = sorted((r for r in results if r["target"] == target), key=lambda r: r["calls"])
        calls = [r["calls"] for r in rows]
        cpu_ax.plot(calls, [r["cpu_ms_per_call_second"] or 0 for r in rows], marker="o", label=target)
        for ax, key in ((in_ax, "inbound_delay_ms"), (out_ax, "outbound_delay_ms")):
            for pct, style in (("p50", "-"), ("p99", "--")):
                ax.plot(calls, [(r[key] or {}).get(pct, float("nan")) for r in rows], style, marker="o",
                        label=f"{target} {pct}")
        for r in rows:
            if r["load_behind"]:
                cpu_ax.annotate("load behind", (r["calls"], r["cpu_ms_per_call_second"] or 0), fontsize=7)
    cpu_ax.set(title="server CPU per call-second", xlabel="concurrent calls", ylabel="CPU ms / call-s")
    in_ax.set(title="phone -> model delay beyond best", xlabel="concurrent calls", ylabel="ms")
    out_ax.set(title="model -> phone delay beyond best", xlabel="concurrent calls", ylabel="ms")
    for ax in (cpu_ax, in_ax, out_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(data["command"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _median_rounds(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """With several rounds per step (``--repeat``), each step and target's round of median CPU; else as is."""
    chosen = []
    for calls, target in dict.fromkeys((r["calls"], r["target"]) for r in results):
        rows = sorted((r for r in results if r["calls"] == calls and r["target"] == target),
                      key=lambda r: r["cpu_ms_per_call_second"] or 0)
        chosen.append(rows[(len(rows) - 1) // 2])
    return chosen
