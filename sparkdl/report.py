"""Training report: a model bundle's events and metrics -> PNG plots and one HTML page (no display needed)."""
from __future__ import annotations

import html
import json
from pathlib import Path

from sparkdl.bundle import ModelBundle
from sparkdl.extras import DISTRIBUTION, available, require
from sparkdl.train.events import EpochEvent, Event, RoundEvent, events_from_json


def _plt():
    matplotlib = require("matplotlib", "report", "plotting the report")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss(events: list[Event], path: Path) -> None:
    plt = _plt()
    rounds = [e for e in events if isinstance(e, RoundEvent)]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([e.iteration for e in rounds], [e.loss for e in rounds], lw=1)
    ax.set(xlabel="iteration (averaging round / sharing step)", ylabel="training loss (cross-entropy)", title="Loss per iteration")
    ax.grid(alpha=0.3)
    _save(plt, fig, path)


def plot_accuracy(events: list[Event], path: Path) -> None:
    plt = _plt()
    epochs = [e for e in events if isinstance(e, EpochEvent)]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [e.epoch + 1 for e in epochs]
    ax.plot(x, [e.train_loss for e in epochs], marker="o", label="train loss")
    if any(e.valid_accuracy is not None for e in epochs):
        ax2 = ax.twinx()
        ax2.plot(x, [e.valid_accuracy for e in epochs], marker="s", color="tab:green", label="valid accuracy")
        ax2.set_ylabel("valid accuracy")
        ax2.legend(loc="lower right")
    ax.set(xlabel="epoch", ylabel="train loss", title="Per epoch")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    _save(plt, fig, path)


def plot_phases(events: list[Event], path: Path) -> None:
    plt = _plt()
    rounds = [e for e in events if isinstance(e, RoundEvent) and e.phases]
    phases = sorted({p for e in rounds for p in e.phases})
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(rounds)
    x = [e.iteration for e in rounds]
    for phase in phases:
        values = [e.phases.get(phase, 0.0) for e in rounds]
        ax.bar(x, values, bottom=bottom, label=phase, width=1.0)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set(xlabel="iteration", ylabel="seconds", title="Phase timings per round")
    ax.legend()
    _save(plt, fig, path)


def plot_sharing(events: list[Event], path: Path) -> None:
    """Gradient sharing: the threshold, the fraction of entries sent and the message size per step (rank 0)."""
    plt = _plt()
    steps = [e for e in events if isinstance(e, RoundEvent) and e.tau is not None]
    x = [e.iteration for e in steps]
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    axes[0].semilogy(x, [e.tau for e in steps], lw=1)
    axes[0].set(ylabel="threshold tau", title="Gradient sharing (rank 0)")
    axes[1].semilogy(x, [max(e.sent_fraction or 0.0, 1e-9) for e in steps], lw=1, color="tab:orange")
    axes[1].set(ylabel="fraction sent")
    axes[2].plot(x, [e.message_bytes for e in steps], lw=1, color="tab:green", label="message bytes")
    axes[2].plot(x, [e.residual_norm for e in steps], lw=1, color="tab:red", label="residual norm")
    axes[2].set(xlabel="step", yscale="log")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    _save(plt, fig, path)


def plot_confusion(confusion: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    import numpy as np

    plt = _plt()
    m = np.asarray(confusion)
    size = min(12, 3 + 0.35 * len(labels))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    if len(labels) <= 30:  # labels are data, drawn as they are: '$', '\\' and '_' are no mathtext markup
        ax.set_xticks(range(len(labels)), labels, rotation=90, parse_math=False)
        ax.set_yticks(range(len(labels)), labels, parse_math=False)
        for (i, j), v in np.ndenumerate(m):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > m.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    _save(plt, fig, path)


# why a report has no plots, in its page and in the lines of the commands that write one
NO_PLOTS_REASON = f"matplotlib is not installed (pip install '{DISTRIBUTION}[report]')"
NO_PLOTS = f"<p>No plots: {NO_PLOTS_REASON}.</p>"


def write_report(model_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``loss.png``, ``epochs.png``, ``phases.png``, ``confusion.png`` (+ ``sharing.png`` for the sharing
    master) and ``report.html``; returns the HTML. Without matplotlib (the ``report`` extra) the page alone, saying
    how to get the plots."""
    bundle = ModelBundle.load(model_dir)
    out = Path(out_dir) if out_dir else Path(model_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    events = events_from_json(bundle.events)
    plots = available("matplotlib")
    if events and plots:
        plot_loss(events, out / "loss.png")
        plot_accuracy(events, out / "epochs.png")
        plot_phases(events, out / "phases.png")
        figures += [("Training loss", "loss.png"), ("Per epoch", "epochs.png"), ("Phase timings", "phases.png")]
        if any(isinstance(e, RoundEvent) and e.tau is not None for e in events):
            plot_sharing(events, out / "sharing.png")
            figures.append(("Gradient sharing", "sharing.png"))
    split = next((s for s in ("test", "valid", "train") if s in bundle.metrics), None)
    if split and plots:
        plot_confusion(bundle.metrics[split]["confusion"], bundle.labels, out / "confusion.png", f"Confusion matrix ({split})")
        figures.append((f"Confusion matrix ({split})", "confusion.png"))
    rows = []
    for s in ("train", "valid", "test"):
        m = bundle.metrics.get(s)
        if m:
            rows.append(
                f"<tr><td>{s}</td><td>{m['n']}</td><td>{m['accuracy']:.4f}</td><td>{m['top5']:.4f}</td>"
                f"<td>{m['macro_precision']:.4f}</td><td>{m['macro_recall']:.4f}</td><td>{m['macro_f1']:.4f}</td></tr>"
            )
    facts = {k: bundle.metrics.get(k) for k in ("best_epoch", "epochs_run", "wall_seconds", "examples_per_second",
                                                "bytes_driver_to_workers", "bytes_workers_to_driver", "phase_seconds",
                                                "bytes_between_workers", "update_bytes", "dense_equivalent_bytes",
                                                "compression_ratio", "sent_fraction", "ranks_identical", "updates_exactly_once",
                                                "transport_rejected")
             if k in bundle.metrics}  # fmt: skip
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>sparkdl training report</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>sparkdl training report</h1>
<p>Model: {html.escape(str(Path(model_dir).resolve()))}<br>Backbone: {html.escape(json.dumps(bundle.backbone.get("name")))},
head: {html.escape(json.dumps(bundle.head.config.to_json()))}, {bundle.head.n_classes} classes,
{bundle.head.in_dim}-d features</p>
<table><tr><th>split</th><th>n</th><th>accuracy</th><th>top-5</th><th>macro precision</th><th>macro recall</th><th>macro F1</th></tr>
{''.join(rows)}</table>
<pre>{html.escape(json.dumps(facts, indent=2))}</pre>
<pre>{html.escape(json.dumps(bundle.training, indent=2))}</pre>
{''.join(f'<h2>{html.escape(t)}</h2><img src="{f}" alt="{html.escape(t)}">' for t, f in figures)}
{"" if plots else NO_PLOTS}
</body></html>
"""
    (out / "report.html").write_text(page)
    return out / "report.html"
