"""Evaluation reports: per-method results, JSON, side-by-side markdown tables and plots.

One :class:`EvalReport` holds several methods (the dual-encoder baseline and the new ones)
so that they are read side by side: metrics as percentages, per-stage cost (encoder passes,
reranker pair evaluations, LLM calls and tokens) and wall time beside them, the notes a
method attaches (e.g. "R@K cannot exceed the number of beams") and the per-round curves of
dialog evaluations. The layout follows the result tables of CLIP_benchmark and ChatIR:
rows are methods, columns are metrics, values are percentages with one decimal.

The report is plain data; :func:`vistrieve.evals.runner.evaluate` fills it. Files are
written atomically (:mod:`vistrieve.utils.io`); plots use matplotlib's Agg backend, chosen
inside :meth:`EvalReport.save_plots` so that importing this module has no side effect.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vistrieve.utils.io import (
    FORMAT_VERSION,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
)

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"

_DIRECTIONS = ("text_to_image", "image_to_text")
# "R@K" at the start of a key or after an underscore; "MRR@10" and "R_subset@3" do not match.
_RECALL = re.compile(r"^(?:(?P<head>.*)_)?R@(?P<k>\d+)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class MethodResult:
    """One method's results across every evaluator of a run.

    Args:
        metrics: Metric key -> value, fractions in ``[0, 1]`` (keys are prefixed with the
            evaluator's name, ``{name}_{direction}_R@{k}``).
        cost: ``"{stage}.{counter}"`` -> increase of the counter over the whole run
            (``"dense.encoder.text_passes"``, ``"qformer.pairs_evaluated"``,
            ``"rewriter.llm_tokens"``).
        cost_by_evaluator: The same increases, per evaluator label.
        seconds: Evaluator label -> wall time of the evaluation in seconds.
        curves: Curve key -> one value per dialog round (e.g. ``"chat_hits@10"`` ->
            cumulative Hits@10 after rounds 0..R).
        notes: Remarks attached by the method or the evaluators.
        errors: Evaluator label -> error text, for evaluations that failed under
            ``continue_on_error``.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    cost_by_evaluator: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def wall_time(self) -> float:
        """Total seconds over every evaluator."""
        return float(sum(self.seconds.values()))

    @property
    def failed(self) -> bool:
        """Whether any evaluation of this method raised."""
        return bool(self.errors)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodResult:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown MethodResult keys {sorted(unknown)}; expected {sorted(known)}"
            )
        return cls(
            metrics={k: float(v) for k, v in data.get("metrics", {}).items()},
            cost={k: float(v) for k, v in data.get("cost", {}).items()},
            cost_by_evaluator={
                ev: {k: float(v) for k, v in c.items()}
                for ev, c in data.get("cost_by_evaluator", {}).items()
            },
            seconds={k: float(v) for k, v in data.get("seconds", {}).items()},
            curves={k: [float(x) for x in v] for k, v in data.get("curves", {}).items()},
            notes=[str(n) for n in data.get("notes", [])],
            errors={k: str(v) for k, v in data.get("errors", {}).items()},
        )


@dataclass
class Section:
    """What one evaluator of a run produced: its kind, name and metric keys.

    Args:
        kind: The evaluator's class name (``"RetrievalEvaluator"``).
        name: The evaluator's name (the prefix of its metric keys; may be empty).
        primary_metric: The key the evaluator ranks methods by.
        metrics: Every key it produced for any method, in first-seen order.
    """

    kind: str
    name: str = ""
    primary_metric: str = ""
    metrics: list[str] = field(default_factory=list)


@dataclass
class EvalReport:
    """Results of :func:`~vistrieve.evals.runner.evaluate` for several methods.

    Args:
        title: Heading of the markdown report.
        methods: Method name -> its results, in evaluation order.
        sections: Evaluator label -> :class:`Section`, in evaluation order; groups the
            metric columns of the markdown tables.
        info: Free-form run description (dataset, split, command line), saved as is.

    Example:
        >>> r = EvalReport("toy", {"bm": MethodResult(metrics={"t_R@1": 0.5})})
        >>> "| bm | 50.0 |" in r.to_markdown()
        True
    """

    title: str = "vistrieve evaluation"
    methods: dict[str, MethodResult] = field(default_factory=dict)
    sections: dict[str, Section] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (with a ``format_version``)."""
        return {
            "format_version": FORMAT_VERSION,
            "title": self.title,
            "info": self.info,
            "sections": {label: asdict(s) for label, s in self.sections.items()},
            "methods": {n: r.to_dict() for n, r in self.methods.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalReport:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: for a report written by a newer, incompatible format version.
        """
        version = data.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(
                f"report format version {version} is newer than this vistrieve reads "
                f"({FORMAT_VERSION}); upgrade vistrieve"
            )
        return cls(
            title=str(data.get("title", "")),
            methods={n: MethodResult.from_dict(r) for n, r in data.get("methods", {}).items()},
            sections={label: Section(**s) for label, s in data.get("sections", {}).items()},
            info=dict(data.get("info", {})),
        )

    def to_json(self, path: str | Path) -> Path:
        """Write the report as JSON, atomically; returns the path."""
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def from_json(cls, path: str | Path) -> EvalReport:
        """Read a report written by :meth:`to_json`."""
        return cls.from_dict(read_json(path))

    # -- queries ------------------------------------------------------------------------
    def metric_names(self) -> list[str]:
        """Every metric key of any method, in first-seen order."""
        names: dict[str, None] = {}
        for r in self.methods.values():
            names.update(dict.fromkeys(r.metrics))
        return list(names)

    def cost_names(self) -> list[str]:
        """Every cost counter of any method, in first-seen order."""
        names: dict[str, None] = {}
        for r in self.methods.values():
            names.update(dict.fromkeys(r.cost))
        return list(names)

    def _groups(self) -> list[tuple[str, list[str], str, str]]:
        """(heading, metric keys, key prefix, primary metric) per table.

        One table per section, then one for metrics no section claims.
        """
        groups: list[tuple[str, list[str], str, str]] = []
        seen: set[str] = set()
        present = set(self.metric_names())
        for label, s in self.sections.items():
            keys = [k for k in s.metrics if k in present and k not in seen]
            if keys:
                pfx = (
                    f"{s.name}_" if s.name and all(k.startswith(f"{s.name}_") for k in keys) else ""
                )
                groups.append((label, keys, pfx, s.primary_metric))
                seen.update(keys)
        rest = [k for k in self.metric_names() if k not in seen]
        if rest:
            groups.append(("other metrics" if groups else "metrics", rest, "", ""))
        return groups

    # -- markdown -----------------------------------------------------------------------
    def to_markdown(self) -> str:
        """Side-by-side tables: metrics per evaluator (percent, 1 decimal), then cost and time.

        Returns:
            Markdown text; rows are methods, columns metrics (the evaluator's key prefix
            is stated under each table and left out of its column names). A metric a
            method did not produce is left blank; failed evaluations are listed at the end.
        """
        lines = [f"# {self.title}", ""]
        for key, value in self.info.items():
            lines.append(f"- {key}: {value}")
        if self.info:
            lines.append("")
        names = list(self.methods)
        for heading, keys, pfx, primary in self._groups():
            lines += [f"## {heading}", ""]
            lines.append(_row(["method", *(k[len(pfx) :] for k in keys)]))
            lines.append("|---|" + "---:|" * len(keys))
            for name in names:
                m = self.methods[name].metrics
                cells = [_percent(m[k]) if k in m else "" for k in keys]
                lines.append(_row([name, *cells]))
            caption = "Values in percent."
            if pfx:
                caption += f" Keys are prefixed `{pfx}`."
            if primary:
                caption += f" Primary metric: `{primary}`."
            lines += ["", caption, ""]

        costs = self.cost_names()
        lines += ["## cost", ""]
        lines.append(_row(["method", "wall time (s)", *costs]))
        lines.append("|---|" + "---:|" * (1 + len(costs)))
        for name in names:
            r = self.methods[name]
            cells = [_count(r.cost[c]) if c in r.cost else "" for c in costs]
            lines.append(_row([name, f"{r.wall_time:.2f}", *cells]))
        lines.append("")
        if costs:
            lines += [
                "Counters are increases over the evaluation (index building is not included).",
                "",
            ]

        curve_rows = [(n, c, v) for n in names for c, v in self.methods[n].curves.items()]
        if curve_rows:
            width = max(len(v) for _, _, v in curve_rows)
            lines += ["## per-round curves", ""]
            lines.append(_row(["method", "curve", *(f"round {r}" for r in range(width))]))
            lines.append("|---|---|" + "---:|" * width)
            for name, curve, values in curve_rows:
                cells = [_percent(v) for v in values] + [""] * (width - len(values))
                lines.append(_row([name, curve, *cells]))
            lines.append("")

        remarks = [f"- {name}: {note}" for name in names for note in self.methods[name].notes] + [
            f"- {name} FAILED in {label}: {err}"
            for name in names
            for label, err in self.methods[name].errors.items()
        ]
        if remarks:
            lines += ["## notes", "", *remarks, ""]
        return "\n".join(lines)

    # -- plots --------------------------------------------------------------------------
    def _recall_groups(self) -> dict[str, dict[int, dict[str, float]]]:
        """Plot group (key head, e.g. ``"flickr_text_to_image"``) -> k -> method -> R@k."""
        groups: dict[str, dict[int, dict[str, float]]] = {}
        for name, r in self.methods.items():
            for key, value in r.metrics.items():
                match = _RECALL.match(key)
                if match:
                    head = match.group("head") or ""
                    by_k = groups.setdefault(head, {})
                    by_k.setdefault(int(match.group("k")), {})[name] = value
        return groups

    def save_plots(self, directory: str | Path) -> list[Path]:
        """Write PNG plots: grouped R@K bars per method and direction, Hits@K per dialog round.

        One bar chart per group of R@K keys (each direction of each retrieval evaluator,
        each composed evaluator), bars grouped by K with one bar per method; one line chart
        per dialog curve with a line per method.

        Args:
            directory: Output folder (created when missing).

        Returns:
            The PNG files written (none when the report has no R@K metric or curve).
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        names = list(self.methods)
        width = 0.8 / max(1, len(names))
        for head, by_k in self._recall_groups().items():
            ks = sorted(by_k)
            fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(ks) * max(1, len(names)) / 2), 3.6))
            try:
                for i, name in enumerate(names):
                    xs = [j + i * width for j in range(len(ks))]
                    vals = [100 * by_k[k][name] if name in by_k[k] else 0.0 for k in ks]
                    ax.bar(xs, vals, width, label=name)
                ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(ks))])
                ax.set_xticklabels([f"R@{k}" for k in ks])
                ax.set_ylabel("recall (%)")
                ax.set_ylim(0, 100)
                ax.set_title(_title_of(head))
                ax.legend(fontsize=8)
                fig.tight_layout()
                written.append(_save_fig(fig, out / f"recall_{_safe(head or 'all')}.png"))
            finally:
                plt.close(fig)

        curve_keys: dict[str, None] = {}
        for r in self.methods.values():
            curve_keys.update(dict.fromkeys(r.curves))
        for curve in curve_keys:
            fig, ax = plt.subplots(figsize=(6, 3.6))
            try:
                for name in names:
                    values = self.methods[name].curves.get(curve)
                    if values:
                        ax.plot(
                            range(len(values)), [100 * v for v in values], marker="o", label=name
                        )
                ax.set_xlabel("dialog round")
                ax.set_ylabel(f"cumulative {curve.rpartition('_')[2]} (%)")
                ax.set_ylim(0, 100)
                ax.set_title(f"{curve} per dialog round")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.legend(fontsize=8)
                fig.tight_layout()
                written.append(_save_fig(fig, out / f"dialog_{_safe(curve)}.png"))
            finally:
                plt.close(fig)
        return written

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``report.json``, ``report.md`` and the PNG plots into ``directory``.

        Returns:
            Every file written.
        """
        out = Path(directory)
        files = [self.to_json(out / REPORT_JSON)]
        atomic_write_bytes(out / REPORT_MD, self.to_markdown().encode("utf-8"))
        files.append(out / REPORT_MD)
        files.extend(self.save_plots(out))
        logger.info("wrote evaluation report to %s", out)
        return files


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _percent(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.1f}"


def _count(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _title_of(head: str) -> str:
    for direction in _DIRECTIONS:
        if head == direction or head.endswith("_" + direction):
            name = head[: -len(direction)].rstrip("_")
            arrow = direction.replace("_to_", " -> ")
            return f"{name}: {arrow}" if name else arrow
    return f"{head}: R@K" if head else "R@K"


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_") or "plot"


def _save_fig(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    return path


__all__ = ["REPORT_JSON", "REPORT_MD", "EvalReport", "MethodResult", "Section"]


_MARK = "<!-- experiment {key}: written by `{command}`; edit the config, not this table -->"
_END = "<!-- /experiment {key} -->"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def publish_table(doc: str | Path, key: str, markdown: str, *, command: str) -> bool:
    """Write ``markdown`` into ``doc`` between the markers of experiment ``key``.

    Result tables in the documentation are produced by the runs that measured them: the
    block between ``<!-- experiment KEY: ... -->`` and ``<!-- /experiment KEY -->`` is
    replaced whole (the start marker names the command that wrote it). When ``doc`` has no
    block for ``key`` yet, one is appended at the end. The file is rewritten atomically.

    Args:
        doc: The markdown file (e.g. ``docs/benchmarks.md``).
        key: The experiment's name: letters, digits, ``.``, ``_``, ``-``.
        markdown: The table (or tables) to publish.
        command: The command that reproduces the table, recorded in the start marker.

    Returns:
        True when an existing block was replaced, False when a new one was appended.

    Raises:
        ValueError: A bad key, or a block whose start marker has no end marker.
    """
    if not _KEY.match(key):
        raise ValueError(f"experiment key {key!r}: use letters, digits, '.', '_' and '-'")
    path = Path(doc)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start = re.compile(rf"^<!-- experiment {re.escape(key)}:.*-->$", re.MULTILINE)
    end = _END.format(key=key)
    block = f"{_MARK.format(key=key, command=command)}\n\n{markdown.strip()}\n\n{end}"
    found = start.search(text)
    if found is None:
        new = (text.rstrip("\n") + "\n\n" if text else "") + block + "\n"
        replaced = False
    else:
        stop = text.find(end, found.end())
        if stop < 0:
            raise ValueError(
                f"{path}: experiment {key!r} has a start marker but no {end!r}; "
                "restore the end marker or delete the block"
            )
        new = text[: found.start()] + block + text[stop + len(end) :]
        replaced = True
    atomic_write_bytes(path, new.encode("utf-8"))
    logger.info("published experiment %s into %s", key, path)
    return replaced
