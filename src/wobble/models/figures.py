"""The model card's figures, as PNG files: calibration, ROC, SHAP summary, deprivation at a glance.

Each function takes plain data (as stored in the run's evaluation.json) and a path, draws with
matplotlib's non-interactive backend in a colour-blind-safe palette (Okabe–Ito), and returns the
path. The card gives every figure a text alternative; the numbers are also in its tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = {"model": "#0072B2", "baseline": "#D55E00", "oracle": "#009E73", "champion": "#CC79A7"}
LABELS = {"model": "this model", "baseline": "baseline (counts)", "oracle": "oracle (true risk)",
          "champion": "current champion"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def calibration_figure(curves: dict, path: Path) -> Path:
    """Observed rate against mean predicted risk per tenth of people, with 95% intervals."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=110)
    top = 0.0
    for name in ("model", "baseline", "champion"):
        c = curves.get(name)
        if not c:
            continue
        pred, obs = np.array(c["predicted"]), np.array(c["observed"])
        err = np.vstack([obs - np.array(c["low"]), np.array(c["high"]) - obs])
        ax.errorbar(pred, obs, yerr=err, marker="o", ms=4, capsize=2, lw=1.2, color=COLOURS[name],
                    label=LABELS[name])
        top = max(top, pred.max(), np.array(c["high"]).max())
        listed = c.get("listed")  # the people each list held: their risks run above the top tenth's mean
        if listed and listed.get("predicted"):
            lp, lo = listed["predicted"][0], listed["observed"][0]
            ax.errorbar([lp], [lo], yerr=[[lo - listed["low"][0]], [listed["high"][0] - lo]], marker="s", ms=7,
                        capsize=3, lw=0, elinewidth=1.2, mfc="white", color=COLOURS[name],
                        label=f"{LABELS[name]}: people listed at capacity")
            top = max(top, lp, listed["high"][0])
    top = min(1.0, top * 1.05 + 0.01)
    ax.plot([0, top], [0, top], ls="--", color="#555555", lw=1, label="perfect calibration")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="predicted risk (mean in each tenth of people, and of those listed)",
           ylabel="observed rate", title="Calibration on the test period")
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def roc_figure(curves: dict, aurocs: dict[str, float], path: Path) -> Path:
    """ROC curves of each scorer on the test period."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=110)
    for name in ("oracle", "model", "champion", "baseline"):
        c = curves.get(name)
        if not c:
            continue
        label = f"{LABELS[name]} (AUROC {aurocs[name]:.3f})" if aurocs.get(name) is not None else LABELS[name]
        ax.plot(c["fpr"], c["tpr"], color=COLOURS[name], lw=1.5, label=label,
                ls=":" if name == "oracle" else "-")
    ax.plot([0, 1], [0, 1], ls="--", color="#555555", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate", ylabel="true positive rate",
           title="ROC on the test period")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def shap_figure(contrib: np.ndarray, X: np.ndarray, features: list[str], path: Path, max_display: int = 15) -> Path:
    """shap's own beeswarm summary: each dot a test person, colour the feature's value."""
    plt = _pyplot()
    import shap

    # shap shuffles the dots with numpy's global generator: seed it here, so a card is the same run
    # to run, and leave the caller's generator as it was
    state = np.random.get_state()
    np.random.set_state(np.random.RandomState(0).get_state())
    try:
        shap.summary_plot(contrib, X, feature_names=features, show=False, max_display=max_display,
                          plot_size=(9.5, 0.5 * max_display + 1.5), color_bar_label="feature value")
    finally:
        np.random.set_state(state)
    fig = plt.gcf()
    fig.axes[0].set_xlabel("contribution to the log-odds of the outcome (SHAP value)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def deprivation_figure(rows: list[dict], path: Path) -> Path:
    """Per IMD quintile: share of the cohort, of outcomes and of people listed, side by side
    (a share suppressed for small numbers is marked, not drawn as zero)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=110)
    rows = [r for r in rows if r["group"] != "unknown"]
    x = np.arange(len(rows))
    series = (("share_of_rows", "of the cohort", "#999999"), ("share_of_outcomes", "of outcomes", "#E69F00"),
              ("share_of_listed", "of people listed", "#0072B2"))
    for i, (key, label, colour) in enumerate(series):
        vals = [100 * r[key] if r.get(key) is not None else 0 for r in rows]
        ax.bar(x + (i - 1) * 0.27, vals, width=0.27, label=label, color=colour)
        for j, r in enumerate(rows):  # a suppressed share is not a zero: say so where its bar would be
            if r.get(key) is None:
                ax.text(x[j] + (i - 1) * 0.27, 0.5, "suppressed", rotation=90, ha="center", va="bottom",
                        fontsize=7, color="#333333")
    ax.set_xticks(x, [f"{r['group']}" + (" (most deprived)" if r["group"] == "1" else "")
                      + (" (least)" if r["group"] == "5" else "") for r in rows])
    ax.set(ylabel="per cent", xlabel="IMD quintile of the home area",
           title="Who is in the cohort, has the outcome, is listed")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
