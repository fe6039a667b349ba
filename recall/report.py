"""The run report: `report.md` with the metrics tables and PNG plots (HR@K vs K, loss, validation HR)."""

from __future__ import annotations

import json
from pathlib import Path

from recall.io import atomic_path, write_text


def metrics_table(rows: dict[str, dict], ks: list[int]) -> str:
    """Markdown table: one row per (name, variant) with HR@K and NDCG@K."""
    head = "| system | variant | " + " | ".join(f"HR@{k}" for k in ks) + " | " + " | ".join(f"NDCG@{k}" for k in ks) + " |"
    sep = "|" + "---|" * (2 + 2 * len(ks))
    lines = [head, sep]
    for name, res in rows.items():
        for variant in ("filtered", "unfiltered"):
            m = res[variant]
            lines.append(f"| {name} | {variant} | " + " | ".join(f"{m[f'hr@{k}']:.4f}" for k in ks) + " | "
                         + " | ".join(f"{m[f'ndcg@{k}']:.4f}" for k in ks) + " |")
    return "\n".join(lines)


def _ks(metrics: dict) -> list[int]:
    return sorted(int(k.split("@")[1]) for k in metrics["test"]["filtered"] if k.startswith("hr@"))


def _plot(path: Path, draw) -> None:
    # A bare Figure (no pyplot) leaves the caller's matplotlib backend alone — notebooks keep inline plots.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6), dpi=110)
    ax = fig.add_subplot()
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _sampler_line(info: dict | None) -> str:
    if not info:
        return "No sampler (exact softmax over the catalogue)."
    return (f"Sampler `{info['sampler']}`: KL(train item frequency ‖ sampler Q) = {info['kl_train_vs_q']} nats; "
            f"the top 1% of items hold {info['p_top1pct_mass']:.1%} of training positives and "
            f"{info['q_top1pct_mass']:.1%} of the sampler's draws. A large KL means the log Q correction "
            "has to do more work (higher variance): consider `unigram` or `in_batch`.")


def write_report(run_dir: str | Path, metrics: dict) -> Path:
    run_dir = Path(run_dir)
    ks = _ks(metrics)
    history_path = run_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else {"epochs": [], "loss": []}

    def hr_vs_k(ax):
        for name, res in (("model", metrics["test"]), ("most popular", metrics["most_popular"]["test"])):
            ax.plot(ks, [res["filtered"][f"hr@{k}"] for k in ks], marker="o", label=f"{name} (filtered)")
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_ylabel("HR@K (test)")
        ax.legend()

    def loss(ax):
        if history["loss"]:
            steps, values = zip(*history["loss"])
            ax.plot(steps, values)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (smoothed)")

    def valid(ax):
        epochs = history["epochs"]
        for key in sorted({k for e in epochs for k in e if k.startswith("valid_hr@")}, key=lambda s: int(s.split("@")[1])):
            ax.plot([e["epoch"] for e in epochs], [e[key] for e in epochs], marker="o", label=key[6:].upper())
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation HR@K (filtered)")
        if epochs:
            ax.legend()

    plots = {"hr_at_k.png": hr_vs_k, "loss.png": loss, "valid_hr.png": valid}
    for name, draw in plots.items():
        _plot(run_dir / name, draw)
    t = metrics.get("train", {})
    d = metrics.get("data", {})
    text = f"""# recall run report

Data: {d.get('users')} users, {d.get('items')} items, {d.get('train_interactions')} train interactions,
{d.get('examples')} training examples. Index: `{metrics.get('index', {}).get('factory')}`.

Training: {t.get('epochs')} epochs, {t.get('steps')} steps, {t.get('seconds')} s,
{t.get('examples_per_sec')} examples/s, loss `{t.get('loss')}`.
{_sampler_line(t.get('sampler'))}

## Test (leave-last-out, full ranking over the catalogue)

{metrics_table({"model": metrics["test"], "most popular": metrics["most_popular"]["test"]}, ks)}

## Validation

{metrics_table({"model": metrics["valid"]}, ks)}

![HR@K vs K](hr_at_k.png)
![training loss](loss.png)
![validation HR](valid_hr.png)
"""
    write_text(run_dir / "report.md", text)
    return run_dir / "report.md"
