"""Metrics: metrics.jsonl (one object per logged step), tensorboardX scalars and PNG curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

from exploresft_jax.data.jsonl import read_jsonl


class MetricsLogger:
    """Appends `{"step": s, ...}` lines to workdir/metrics.jsonl and scalars to tensorboard (workdir/tb)."""

    def __init__(self, workdir: str | Path, *, tensorboard: bool = True, enabled: bool = True):
        self.workdir = Path(workdir)
        self.enabled = enabled
        self.path = self.workdir / "metrics.jsonl"
        self.writer = None
        if enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self.writer = SummaryWriter(logdir=str(self.workdir / "tb"), flush_secs=10)

    def log(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in metrics.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": int(step), **clean}) + "\n")
        if self.writer is not None:
            for k, v in clean.items():
                if v is not None:
                    self.writer.add_scalar(f"{prefix}/{k}", v, global_step=int(step))

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_text(tag, text, global_step=int(step))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def truncate_jsonl(path: str | Path, *, after_step: int, key: str = "step") -> int:
    """Drops the lines of a JSONL log whose `key` (or "iteration") is above `after_step`: what a resumed run
    logged after its checkpoint and is about to log again. Rewrites the file atomically; returns lines dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)

    def keep(line: str) -> bool:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill mid-write: it belongs to the lost steps
            return False
        return int(rec.get(key, rec.get("iteration", 0))) <= after_step

    kept = [ln for ln in lines if ln.strip() and keep(ln)]
    if len(kept) != len(lines):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)
    return len(lines) - len(kept)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl ([] when the run has not logged yet)."""
    return read_jsonl(path) if Path(path).exists() else []


def plot_curves(metrics_path: str | Path, out_png: str | Path, groups: dict[str, list[str]]) -> Path | None:
    """One panel per group (title -> metric keys) of metric vs step; skips keys that never appear."""
    rows = read_metrics(metrics_path)
    panels = [(t, [k for k in keys if any(r.get(k) is not None for r in rows)]) for t, keys in groups.items()]
    panels = [(t, keys) for t, keys in panels if keys]
    if not rows or not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
