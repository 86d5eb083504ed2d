"""The README's results tables, generated from the committed results files (results/*.json).

``python -m pipeline report`` rewrites each block between ``<!-- report:NAME -->`` and
``<!-- /report:NAME -->`` in README.md from the files that block names, so no number in those
tables is typed by hand. A results file is what ``reeval`` (or peers/ctgan_peer.py) wrote:
``per_seed``, ``mean``, ``stderr`` and ``floor`` per metric, ``seeds`` and the wall time.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.metrics.registry import METRICS

# Each block: (title of a row, results file) per row, and the metrics as columns.
TABLE_COLUMNS = (("quality", "quality"), ("column_shapes", "column shapes"),
                 ("pair_trends", "pair trends"), ("detection_auc", "detection AUC (lower)"),
                 ("category_coverage", "category coverage"), ("dcr_share", "DCR share"))


def table_blocks(results: Path) -> dict[str, list[tuple[str, Path]]]:
    """One block per table that has a project re-evaluation: the winner, CTGAN at its defaults
    and at the winner's wall time, in that order; files that do not exist are left out."""
    blocks: dict[str, list[tuple[str, Path]]] = {}
    for winner in sorted(results.glob("table-*.json")):
        table = winner.stem.removeprefix("table-")
        rows = [("this project's winner (`reeval`)", winner),
                ("CTGAN, defaults (300 epochs)", results / f"ctgan-{table}.json"),
                ("CTGAN, epochs sized to the winner's wall time (timed from two short fits)",
                 results / f"ctgan-budget-{table}.json")]
        blocks[f"table-{table}"] = [(title, path) for title, path in rows if path.exists()]
    return blocks


def cell(report: dict[str, Any], metric: str) -> str:
    """mean ± standard error (the worst seed) over the seeds."""
    if metric not in report["mean"]:
        return "-"
    mean, se = report["mean"][metric], report["stderr"][metric]
    if not math.isfinite(mean):
        return "n/a"
    values = [p[metric] for p in report["per_seed"] if math.isfinite(p.get(metric, math.nan))]
    worst = max(values) if METRICS[metric].better == "lower" else min(values)
    return f"{mean:.3f} ± {se:.3f} (worst {worst:.3f})"


def markdown_table(rows: Sequence[tuple[str, Path]]) -> str:
    reports = [(title, json.loads(path.read_text()), path) for title, path in rows]
    head = ["row", *[label for _, label in TABLE_COLUMNS], "seeds", "wall s / seed", "file"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for title, report, path in reports:
        per_seed = report.get("seconds_per_seed") or report["seconds"] / len(report["seeds"])
        lines.append("| " + " | ".join([
            title, *[cell(report, metric) for metric, _ in TABLE_COLUMNS],
            str(len(report["seeds"])), f"{per_seed:.0f}", f"`{path.as_posix()}`"]) + " |")
    floor = reports[0][1].get("floor") if reports else None
    if floor:
        lines.append("| real rows (training split against held-out; the floor) | " + " | ".join(
            f"{floor[m]:.3f}" if m in floor else "-" for m, _ in TABLE_COLUMNS) + " | | | |")
    return "\n".join(lines)


def rewrite(readme: Path, blocks: dict[str, str]) -> str:
    """README text with each ``<!-- report:NAME -->...<!-- /report:NAME -->`` block replaced."""
    text = readme.read_text()
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- report:{re.escape(name)} -->\n).*?(<!-- /report:"
                             rf"{re.escape(name)} -->)", re.S)
        if not pattern.search(text):
            raise ConfigError(f"{readme}: no <!-- report:{name} --> ... <!-- /report:{name} --> "
                              "block to fill (add one where the table belongs)")
        start, end = pattern.search(text).span()  # type: ignore[union-attr]
        opening, closing = f"<!-- report:{name} -->\n", f"<!-- /report:{name} -->"
        text = text[:start] + opening + body + "\n" + closing + text[end:]
    return text


def write_report(readme: str | Path = "README.md", results: str | Path = "results") -> list[str]:
    """Fill every block of the README that the results folder has files for; returns their
    names."""
    blocks = {name: markdown_table(rows)
              for name, rows in table_blocks(Path(results)).items() if rows}
    path = Path(readme)
    path.write_text(rewrite(path, blocks))
    return sorted(blocks)
