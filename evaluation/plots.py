"""The PNG of ``streamrec evaluate``: each system's HR@K over event index, refits marked.

Top panel: cumulative HR@K (the running value of the headline metric). Bottom panel: rolling
HR@K over a window of scored events, which shows drift and the effect of each refit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

_COLOURS = {
    "streamrec": "#d62728",
    "streamrec-untrained": "#ff7f0e",
    "popularity": "#7f7f7f",
    "cooccurrence-knn": "#2ca02c",
    "als": "#1f77b4",
    "sasrec": "#9467bd",
    "streamrec-explore-thompson": "#e377c2",
    "streamrec-explore-epsilon": "#8c564b",
}
#: for systems not named above (custom hooks, new baselines): colours no named system uses
_SPARE = ("#17becf", "#bcbd22", "#393b79", "#637939")


def plot_stream(run, path: str | Path, *, title: str = "", random_hr: float | None = None,
                window: int | None = None, aliases: dict[str, str] | None = None) -> Path:
    """Write the two-panel plot for a :class:`evaluation.protocol.StreamRun` and return its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    k = run.k
    x = run.scored + 1  # events replayed so far when the list was scored (1-based)
    n = len(x)
    if window is None:
        window = int(min(1000, max(50, n // 20)))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True, dpi=120,
                                   gridspec_kw={"height_ratios": [1, 1]})
    for name, ranks in run.ranks.items():
        hits = (ranks <= k).astype(np.float64)
        if not len(hits):
            continue
        label = (aliases or {}).get(name, name)
        colour = _COLOURS.get(name) or _SPARE[list(run.ranks).index(name) % len(_SPARE)]
        cum = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        burn = min(50, len(hits) // 10)  # the first few dozen lists are noise at any scale
        ax1.plot(x[burn:], cum[burn:], label=f"{label} ({cum[-1]:.3f})", color=colour, lw=1.6)
        if len(hits) >= window:
            roll = np.convolve(hits, np.ones(window) / window, mode="valid")
            ax2.plot(x[window - 1:], roll, color=colour, lw=1.2, label=label)
    for ax in (ax1, ax2):
        if random_hr is not None:
            ax.axhline(random_hr, color="black", lw=0.8, ls=":", label="random" if ax is ax1 else None)
        pts = run.retrain_points
        label = f"refit (ALS / retrain hook), {len(pts)}x" if ax is ax1 and pts else None
        if len(pts) <= 30:
            for i, pt in enumerate(pts):
                ax.axvline(pt, color="#1f77b4", lw=0.6, alpha=0.4, ls="--", label=label if i == 0 else None)
        else:  # many refits: short ticks along the top edge instead of a curtain of lines
            ax.vlines(pts, 0.95, 1.0, transform=ax.get_xaxis_transform(), color="#1f77b4", lw=0.8, alpha=0.7,
                      label=label)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    ax1.set_ylabel(f"cumulative HR@{k}")
    ax2.set_ylabel(f"rolling HR@{k} ({window} scored events)")
    ax2.set_xlabel("events replayed (event-time order)")
    ax1.set_title(title or f"prequential HR@{k}")
    ax1.legend(loc="upper left", fontsize=8, ncol=2, framealpha=0.85)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
