"""Plotting shared by suites and reports: matplotlib on the Agg backend (no display needed).
Import `plt` from here so the backend is chosen before pyplot loads."""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")
logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # numeric-looking labels are fine

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from nbeval.stats import Estimate  # noqa: E402


def bar_with_ci(ax: Axes, estimates: dict[str, Estimate], title: str, ylim: tuple[float, float] | None = None) -> None:
    """Bars of point estimates with their confidence intervals as error bars, n under each label."""
    labels = list(estimates)
    vals = [estimates[k].value for k in labels]
    # max(0, …): a percentile bound can sit a rounding error inside the mean
    lo = [max(0.0, estimates[k].value - estimates[k].ci_low) for k in labels]
    hi = [max(0.0, estimates[k].ci_high - estimates[k].value) for k in labels]
    ax.bar([f"{k}\n(n={estimates[k].n})" for k in labels], vals, yerr=[lo, hi], capsize=4, color="#4c72b0")
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.tick_params(axis="x", labelrotation=30)


def png_data_uri(png: bytes) -> str:
    """An image as a data: URI, so an HTML page can embed it and stay a single file."""
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode()


def figure_data_uri(fig, dpi: int = 90) -> str:
    """A figure as an embedded PNG; closes it."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return png_data_uri(buf.getvalue())


__all__ = ["bar_with_ci", "figure_data_uri", "plt", "png_data_uri"]
