"""PNG plots for docs/benchmarks.md, drawn from bench/results.json (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"


def _stack(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [e for k, e in results.get("entries", {}).items() if k.startswith("stack:")]
    return sorted(rows, key=lambda e: e["counts"]["devices"])


def draw(results: dict[str, Any], out: Path = OUT) -> list[str]:
    """Write the plots; returns their paths relative to docs/ (for the Markdown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    stack = _stack(results)
    entries = results.get("entries", {})

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(f"benchmarks/{name}")

    if stack:
        x = [e["counts"]["devices"] for e in stack]
        labels = [e["scenario"] for e in stack]
        seed = [(e["counts"]["devices"], e) for k, e in entries.items() if k.startswith("baseline:")]
        seed.sort(key=lambda p: p[0])
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, bkey, skey, title in ((axes[0], "requests", "requests", "requests", "Graph requests"),
                                           (axes[1], "ru", "ru", "ru", "resource units (RU)")):
            ax.plot(x, [e["phases"]["full"].get(key) for e in stack], "o-", label="ours: full reconcile")
            ax.plot(x, [e["bound"][bkey] for e in stack], "s--", label="lower bound (correct reconcile)")
            if seed:
                ax.plot([p[0] for p in seed], [p[1].get(skey) for p in seed], "^:", label="seed strategy")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("tenant devices")
            ax.set_title(title)
            for xi, lab in zip(x, labels, strict=True):
                ax.annotate(lab, (xi, ax.get_ylim()[0]), textcoords="offset points", xytext=(0, 4), ha="center",
                            fontsize=8)
            ax.legend(fontsize=8)
        save(fig, "cost_vs_size.png")

        fig, ax = plt.subplots(figsize=(6, 4))
        for e in stack:
            f = e["phases"]["full"]
            ok = f.get("drained")
            ax.plot(e["counts"]["devices"], f["wall_s"], "o" if ok else "x", color="C0" if ok else "C3",
                    markersize=8)
            ax.annotate(e["scenario"] + ("" if ok else " (cap)"), (e["counts"]["devices"], f["wall_s"]),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.axhline(180, color="C2", ls="--", lw=1, label="target scale ≤ 3 min")
        ax.axhline(600, color="C1", ls="--", lw=1, label="target XL ≤ 10 min")
        ax.set_xscale("log")
        ax.set_xlabel("tenant devices")
        ax.set_ylabel("wall s to converge (Table store, Azurite)")
        ax.legend(fontsize=8)
        save(fig, "converge_vs_size.png")

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(x, [e["phases"]["full"].get("peak_rss_mb") for e in stack], "o-", label="peak RSS (full reconcile)")
        ax.plot(x, [e.get("idle_rss_mb") for e in stack], "s:", label="idle RSS (host started)")
        ax.axhline(256, color="C3", ls="--", lw=1, label="target 256 MB (XL)")
        ax.set_xscale("log")
        ax.set_xlabel("tenant devices")
        ax.set_ylabel("MiB")
        ax.legend(fontsize=8)
        save(fig, "rss_vs_size.png")

    fleets = [e for k, e in entries.items() if k.startswith("fleetpoll:")]
    if fleets:
        e = max(fleets, key=lambda e: e["tenants"])
        quiet = sorted(((c["workers"], c) for n, c in e["cycles"].items() if n.startswith("quiet x")),
                       key=lambda wc: wc[0])
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([w for w, _ in quiet], [c.get("tenants_per_min") or 0 for _, c in quiet], "o-",
                label=f"quiet cycle, {e['tenants']} tenants")
        first = e["cycles"].get("first")
        if first:
            ax.plot([first["workers"]], [first.get("tenants_per_min") or 0], "s", label="first cycle (full syncs)")
        ax.axhline(200, color="C3", ls="--", lw=1, label="target: 1,000 tenants per 5 min")
        ax.set_xlabel("queue workers (devhost processes)")
        ax.set_ylabel("tenants per minute")
        ax.set_xticks([w for w, _ in quiet])
        ax.legend(fontsize=8)
        save(fig, "fleet_workers.png")
    return made
