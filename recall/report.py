"""The run report: `report.md` with the metrics tables and PNG plots.

Tables: HR@K / NDCG@K (test, validation), catalogue coverage@K, HR@K by popularity bucket of the
target, and the index (recall against exact search, queries/s). Plots: HR@K vs K, HR@K by
popularity bucket, training loss and validation HR over time.
"""

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


def coverage_table(res: dict, ks: list[int]) -> str:
    """Markdown table of catalogue coverage@K (share of items in at least one user's top-K)."""
    lines = ["| variant | " + " | ".join(f"coverage@{k}" for k in ks) + " |", "|" + "---|" * (1 + len(ks))]
    for variant in ("filtered", "unfiltered"):
        lines.append(f"| {variant} | " + " | ".join(f"{res[variant][f'coverage@{k}']:.4f}" for k in ks) + " |")
    return "\n".join(lines)


POPULARITY_NOTE = ("Each test query is bucketed by its target item's training frequency. Internal ids are "
                   "sorted by frequency; an item is *head* while the items up to and including it hold at "
                   "most 50% of the training interactions, *torso* up to 80%, *tail* after that; *oov* "
                   "targets are outside the vocabulary (always missed). Filtered ranking.")


def popularity_table(rows: dict[str, dict], ks: list[int]) -> str:
    """Markdown table, one row per (bucket, system): catalogue items, queries, HR@K (filtered)."""
    lines = ["| bucket | items | queries | system | " + " | ".join(f"HR@{k}" for k in ks) + " |",
             "|" + "---|" * (4 + len(ks))]
    first = next(iter(rows.values()))
    for bucket in first:
        for name, by_pop in rows.items():
            m = by_pop[bucket]
            lines.append(f"| {bucket} | {m['items']} | {m['count']} | {name} | "
                         + " | ".join(f"{m[f'hr@{k}']:.4f}" for k in ks) + " |")
    return "\n".join(lines)


def index_summary(index: dict, ks: list[int]) -> str:
    """One or two lines: the factory and its parameters, recall@K against exact search, queries/s."""
    params = ", ".join(f"{k}={index[k]}" for k in ("nlist", "nprobe", "ef_search") if k in index)
    head = f"index {index.get('factory')}" + (f" ({params})" if params else "")
    if "qps" not in index:
        return head
    if index.get("exact", True):
        return f"{head}: exact search, {index['qps']:,.0f} queries/s"
    recall = ", ".join(f"recall@{k} {index[f'recall@{k}']:.4f}" for k in ks if f"recall@{k}" in index)
    return (f"{head}: {recall} against exact search (filtered)\n"
            f"{index['qps']:,.0f} queries/s (exact Flat: {index['exact_qps']:,.0f} queries/s) "
            f"over {index['queries']} test queries")


def _index_section(index: dict, ks: list[int]) -> str:
    if "qps" not in index:
        return f"Index: `{index.get('factory')}`."
    params = ", ".join(f"{k} = {index[k]}" for k in ("nlist", "nprobe", "ef_search") if k in index)
    text = f"Index `{index.get('factory')}`" + (f" ({params})" if params else "") + ". "
    if index.get("exact", True):
        return text + (f"Exact search: {index['qps']:,.0f} queries/s over the {index['queries']} test queries "
                       "(filtered top-max(K) search, wall time on this machine).")
    return text + f"""Index recall@K = |approx top-K ∩ exact top-K| / K, averaged over the {index['queries']}
test queries, both searches filtered; queries/s = wall time of that filtered top-max(K) search.

| | {" | ".join(f"recall@{k}" for k in ks)} | queries/s |
|{"---|" * (2 + len(ks))}
| `{index.get('factory')}` | {" | ".join(f"{index[f'recall@{k}']:.4f}" for k in ks)} | {index['qps']:,.0f} |
| exact (`Flat`) | {" | ".join("1.0000" for _ in ks)} | {index['exact_qps']:,.0f} |"""


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


def _sampler_line(info: dict | str | None) -> str:
    if not info:
        return "No sampler (exact softmax over the catalogue)."
    if isinstance(info, str):  # runs trained before the sampler statistics were recorded
        return f"Sampler `{info}`."
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

    by_pop = {name: res["by_popularity"] for name, res in
              (("model", metrics["test"]), ("most popular", metrics["most_popular"]["test"]))
              if "by_popularity" in res}

    def hr_by_popularity(ax):
        import numpy as np

        buckets = [b for b in ("head", "torso", "tail") if b in by_pop["model"]]
        x = np.arange(len(buckets))
        width = 0.8 / len(ks)
        for j, k in enumerate(ks):
            offset = (j - (len(ks) - 1) / 2) * width
            ax.bar(x + offset, [by_pop["model"][b][f"hr@{k}"] for b in buckets], width, label=f"HR@{k}")
            if "most popular" in by_pop:
                ax.plot(x + offset, [by_pop["most popular"][b][f"hr@{k}"] for b in buckets], "k_",
                        markersize=8, label="most popular" if j == 0 else None)
        ax.set_xticks(x, [f"{b}\n({by_pop['model'][b]['count']} queries)" for b in buckets])
        ax.set_ylabel("HR@K (test, filtered)")
        ax.legend(fontsize="small")

    plots = {"hr_at_k.png": hr_vs_k, "loss.png": loss, "valid_hr.png": valid}
    if "model" in by_pop:
        plots["hr_by_popularity.png"] = hr_by_popularity
    for name, draw in plots.items():
        _plot(run_dir / name, draw)
    t = metrics.get("train", {})
    d = metrics.get("data", {})
    index = metrics.get("index", {})
    extra = ""
    if all(f"coverage@{k}" in metrics["test"]["filtered"] for k in ks):
        extra += f"""
## Catalogue coverage (test)

Coverage@K = the share of the {d.get('items')} catalogue items that appear in at least one test user's top-K.

{coverage_table(metrics["test"], ks)}
"""
    if "model" in by_pop:
        extra += f"""
## HR@K by popularity of the target (test)

{POPULARITY_NOTE}

{popularity_table(by_pop, ks)}

![HR@K by popularity bucket](hr_by_popularity.png)
"""
    text = f"""# recall run report

Data: {d.get('users')} users, {d.get('items')} items, {d.get('train_interactions')} train interactions,
{d.get('examples')} training examples. Index: `{index.get('factory')}`.

Training: {t.get('epochs')} epochs, {t.get('steps')} steps, {t.get('seconds')} s,
{t.get('examples_per_sec')} examples/s, loss `{t.get('loss')}`.
{_sampler_line(t.get('sampler'))}

## Test (leave-last-out, full ranking over the catalogue)

{metrics_table({"model": metrics["test"], "most popular": metrics["most_popular"]["test"]}, ks)}

![HR@K vs K](hr_at_k.png)
{extra}
## Index

{_index_section(index, ks)}

## Validation

{metrics_table({"model": metrics["valid"]}, ks)}

![training loss](loss.png)
![validation HR](valid_hr.png)
"""
    write_text(run_dir / "report.md", text)
    return run_dir / "report.md"
