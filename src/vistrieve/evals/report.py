"""Evaluation reports: JSON, a side-by-side markdown table, and matplotlib plots.

One report holds several methods (the dual-encoder baseline and the new ones) so that they
are read side by side: metrics as percentages, per-stage cost (encoder passes, reranker
pairs, LLM calls and tokens) and wall time beside them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vistrieve.evals.runner import MethodResult
from vistrieve.utils.io import atomic_write, atomic_write_bytes, atomic_write_json, read_json

_RK = re.compile(r"^(?:(?P<prefix>.+)_)?(?P<direction>text_to_image|image_to_text)_R@(?P<k>\d+)$")


@dataclass
class EvalReport:
    """Results of :func:`~vistrieve.evals.runner.evaluate` for several methods."""

    title: str = "vistrieve evaluation"
    methods: dict[str, MethodResult] = field(default_factory=dict)

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "title": self.title,
            "methods": {n: dataclasses.asdict(r) for n, r in self.methods.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Inverse of :meth:`to_dict`."""
        return cls(
            title=data.get("title", ""),
            methods={n: MethodResult(**r) for n, r in data.get("methods", {}).items()},
        )

    def to_json(self, path: str | Path) -> None:
        """Write the report as JSON (atomically)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | Path) -> EvalReport:
        """Read a report written by :meth:`to_json`."""
        return cls.from_dict(read_json(path))

    # -- markdown -----------------------------------------------------------------------
    def metric_names(self) -> list[str]:
        """Every metric key of any method, in first-seen order."""
        names: list[str] = []
        for r in self.methods.values():
            names.extend(k for k in r.metrics if k not in names)
        return names

    def to_markdown(self) -> str:
        """Side-by-side tables: metrics (percent, 1 decimal), then cost and time."""
        lines = [f"## {self.title}", ""]
        metrics = self.metric_names()
        if metrics:
            lines.append("| method | " + " | ".join(metrics) + " |")
            lines.append("|---|" + "---:|" * len(metrics))
            for name, r in self.methods.items():
                cells = [f"{100 * r.metrics[m]:.1f}" if m in r.metrics else "" for m in metrics]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
            lines.append("Metrics in percent.")
            lines.append("")
        costs: list[str] = []
        for r in self.methods.values():
            costs.extend(k for k in r.cost if k not in costs)
        lines.append("| method | wall time (s) | " + " | ".join(costs) + " |")
        lines.append("|---|---:|" + "---:|" * len(costs))
        for name, r in self.methods.items():
            cells = [f"{r.cost[c]:,.0f}" if c in r.cost else "" for c in costs]
            lines.append(f"| {name} | {sum(r.seconds.values()):.1f} | " + " | ".join(cells) + " |")
        for name, r in self.methods.items():
            for note in r.notes:
                lines.append(f"\n- {name}: {note}")
            if r.error:
                lines.append(f"\n- {name} FAILED: {r.error}")
        return "\n".join(lines) + "\n"

    # -- plots --------------------------------------------------------------------------
    def save_plots(self, directory: str | Path) -> list[Path]:
        """Write PNG plots: R@K bars per method and direction; Hits@K per dialog round."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        groups: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
        for name, r in self.methods.items():
            for key, value in r.metrics.items():
                m = _RK.match(key)
                if m:
                    g = (m.group("prefix") or "", m.group("direction"))
                    groups.setdefault(g, {}).setdefault(int(m.group("k")), {})[name] = value
        for (pfx, direction), by_k in groups.items():
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ks = sorted(by_k)
            names = list(self.methods)
            width = 0.8 / max(1, len(names))
            for i, name in enumerate(names):
                vals = [100 * by_k[k].get(name, 0.0) for k in ks]
                ax.bar([j + i * width for j in range(len(ks))], vals, width, label=name)
            ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(ks))])
            ax.set_xticklabels([f"R@{k}" for k in ks])
            ax.set_ylabel("%")
            ax.set_ylim(0, 100)
            ax.set_title(f"{pfx + ' ' if pfx else ''}{direction.replace('_', ' ')}")
            ax.legend(fontsize=8)
            fig.tight_layout()
            written.append(
                _save_fig(fig, out / f"recall_{pfx + '_' if pfx else ''}{direction}.png")
            )
            plt.close(fig)
        curves = [(n, label, c) for n, r in self.methods.items() for label, c in r.curves.items()]
        if curves:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for name, label, curve in curves:
                ax.plot(
                    range(len(curve)), [100 * v for v in curve], marker="o", label=f"{name} {label}"
                )
            ax.set_xlabel("dialog round")
            ax.set_ylabel("cumulative Hits@K (%)")
            ax.set_ylim(0, 100)
            ax.legend(fontsize=8)
            fig.tight_layout()
            written.append(_save_fig(fig, out / "dialog_hits.png"))
            plt.close(fig)
        return written

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``report.json``, ``report.md`` and the plots into ``directory``."""
        out = Path(directory)
        self.to_json(out / "report.json")
        atomic_write_bytes(out / "report.md", self.to_markdown().encode("utf-8"))
        return [out / "report.json", out / "report.md", *self.save_plots(out)]


def _save_fig(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    return path
