"""The README's results tables, generated from the committed results files (results/*.json).

``python -m pipeline report`` rewrites each block between ``<!-- report:NAME -->`` and
``<!-- /report:NAME -->`` in README.md from the files that block names, so no number in those
tables is typed by hand. A results file is what ``reeval`` (or peers/ctgan_peer.py) wrote:
``per_seed``, ``mean``, ``stderr`` and ``floor`` per metric, ``seeds`` and the wall time.

One job past 300 lines: each results table is a block of this one README writer.
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


def cell(report: dict[str, Any], metric: str, fmt: str = ".3f") -> str:
    """mean ± standard error (the worst seed) over the seeds."""
    if metric not in report["mean"]:
        return "-"
    mean, se = report["mean"][metric], report["stderr"][metric]
    if not math.isfinite(mean):
        return "n/a"
    values = [p[metric] for p in report["per_seed"] if math.isfinite(p.get(metric, math.nan))]
    worst = max(values) if METRICS[metric].better == "lower" else min(values)
    return f"{mean:{fmt}} ± {se:{fmt}} (worst {worst:{fmt}})"


# The Fashion-MNIST block: a row per file (those that exist), each run of rows followed by its
# files' floor.
IMAGE_COLUMNS = (("fid", "FID (classifier features)", ".1f"),
                 ("classes_covered", "classes covered", ".1f"),
                 ("class_kl", "class KL", ".3f"), ("precision", "precision", ".2f"),
                 ("recall", "recall", ".2f"), ("ndb_fraction", "NDB bins that differ", ".2f"))
# Each peer row sits above the project's row of the same epochs: the study's 10, the seed
# article's 20, and 30 (`reeval --epochs N` of the peer's config).
IMAGE_ROWS = (
    ("seed article's GAN (`conf/seed_article.yaml`, 20 epochs)", "seed_article"),
    ("PyTorch Lightning's GAN example (`conf/lightning_gan.yaml`, 10 epochs)",
     "lightning_gan"),
    ("**this project**: best of the fashion_mnist study (10 epochs)", "fashion_mnist"),
    ("PyTorch Lightning's GAN example (`conf/lightning_gan.yaml`, 20 epochs)",
     "lightning_gan_20"),
    ("**this project**: best of the fashion_mnist study, 20 epochs at constant "
     "rates (`studies/best/fashion_mnist_20.yaml`)", "fashion_mnist_20"),
    ("PyTorch Lightning's GAN example (`conf/lightning_gan.yaml`, 30 epochs)",
     "lightning_gan_30"),
    ("**this project**: best of the fashion_mnist study, 30 epochs at constant "
     "rates (`studies/best/fashion_mnist_30.yaml`)", "fashion_mnist_30"),
)
PROJECT_IMAGE_ROW = "fashion_mnist"  # the block is written once the study's own row exists


def images_table(results: Path) -> str | None:
    """The Fashion-MNIST rows and the real-vs-real floors (the test split against the training
    rows); None without the project's file."""
    rows = [(title, results / f"{name}.json") for title, name in IMAGE_ROWS]
    rows = [(title, path) for title, path in rows if path.exists()]
    if not any(path.stem == PROJECT_IMAGE_ROW for _, path in rows):
        return None
    head = ["row", *[label for _, label, _ in IMAGE_COLUMNS], "seeds", "wall s / seed", "file"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reports = [(title, json.loads(path.read_text()), path) for title, path in rows]
    floors = [" | ".join(f"{floor[m]:{fmt}}" if m in floor else "-"
                         for m, _, fmt in IMAGE_COLUMNS) if (floor := report.get("floor")) else ""
              for _, report, _ in reports]
    # The feature classifier is trained once per cache (runs/cache), so files written on
    # different machines can differ in their floor (and in the digest of their "features"):
    # each run of rows in one feature space is followed by its own floor.
    groups = [(floor, " ".join(report.get("features", [])))
              for floor, (_, report, _) in zip(floors, reports, strict=True)]
    above = " of the rows above it" if len({g for g in groups if g[0]}) > 1 else ""
    for i, (title, report, path) in enumerate(reports):
        per_seed = report.get("seconds_per_seed") or report["seconds"] / len(report["seeds"])
        lines.append("| " + " | ".join([
            title, *[cell(report, metric, fmt) for metric, _, fmt in IMAGE_COLUMNS],
            str(len(report["seeds"])), f"{per_seed:.0f}", f"`{path.as_posix()}`"]) + " |")
        last_of_group = i + 1 == len(groups) or groups[i + 1] != groups[i]
        if floors[i] and last_of_group:
            lines.append(f"| real test images against the training images (the floor{above}) | "
                         f"{floors[i]} | | | |")
    return "\n".join(lines)


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


# A size study's front (results/<study>-trial<N>.json, one per re-evaluated member): a row per
# member, smallest G first, with the size and latency beside the PacGAN columns.
FRONT_COLUMNS = (("modes_covered", "modes"), ("high_quality", "high quality"),
                 ("reverse_kl", "reverse KL"), ("pacgan_score", "pacgan_score"))
ALL_MODES_HQ = 0.95  # "covers all modes with high quality": every seed all modes, mean HQ >= this


def front_blocks(results: Path) -> dict[str, list[Path]]:
    """One block per study with re-evaluated trials, its files smallest generator first."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(results.glob("*-trial*.json")):
        study = re.sub(r"-trial\d+$", "", path.stem)
        groups.setdefault(study, []).append(path)
    return {f"front-{study}": sorted(paths, key=lambda p: _params(json.loads(p.read_text())))
            for study, paths in groups.items()}


def _params(report: dict[str, Any]) -> float:
    return float(report["mean"].get("cost/g_params", math.inf))


def front_table(paths: Sequence[Path]) -> str:
    reports = [(json.loads(p.read_text()), p) for p in paths]
    head = ["trial", "G hidden", "G params", "D hidden",
            *[label for _, label in FRONT_COLUMNS], "ms / 1,000 samples", "seeds", "file"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for report, path in reports:
        model = report["config"]["model"]
        lines.append("| " + " | ".join([
            path.stem.rsplit("-trial", 1)[1], "x".join(map(str, model["g_hidden"])),
            f"{_params(report):,.0f}", "x".join(map(str, model["d_hidden"])),
            *[cell(report, metric) for metric, _ in FRONT_COLUMNS],
            f"{report['mean'].get('cost/sample_ms', math.nan):.2f}",
            str(len(report["seeds"])), f"`{path.as_posix()}`"]) + " |")
    floor = reports[0][0].get("floor") if reports else None
    if floor:
        lines.append("| real samples (the floor) | | | | " + " | ".join(
            f"{floor[m]:.3f}" if m in floor else "-" for m, _ in FRONT_COLUMNS) + " | | | |")
    lines += ["", smallest_sentence(reports)]
    return "\n".join(lines)


def front_figure(paths: Sequence[Path], out: Path) -> None:
    """G's parameters against the fresh seeds' high quality and modes (mean and standard error):
    the re-evaluated front as a picture, written beside its results files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = [json.loads(p.read_text()) for p in paths]
    size = [_params(r) for r in reports]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in ((axes[0], "high_quality", "high quality (fresh seeds)"),
                              (axes[1], "modes_covered", "modes covered (fresh seeds)")):
        ax.errorbar(size, [r["mean"][metric] for r in reports],
                    yerr=[r["stderr"][metric] for r in reports], fmt="o-", capsize=3)
        for x, r in zip(size, reports, strict=True):
            ax.annotate("x".join(map(str, r["config"]["model"]["g_hidden"])),
                        (x, r["mean"][metric]), textcoords="offset points", xytext=(4, -10),
                        fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("G parameters (log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    counts = sorted({len(r["seeds"]) for r in reports})
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    fig.suptitle(f"{paths[0].stem.rsplit('-trial', 1)[0]}: the front, re-evaluated "
                 f"({seeds} fresh seeds each)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def smallest_sentence(reports: Sequence[tuple[dict[str, Any], Path]]) -> str:
    winners = [(r, p) for r, p in reports
               if _all_modes(r) and r["mean"]["high_quality"] >= ALL_MODES_HQ]
    if not winners:
        return (f"None of these re-evaluated generators covers every mode on every seed with a "
                f"mean high quality >= {ALL_MODES_HQ:.0%}.")
    report, path = min(winners, key=lambda rp: _params(rp[0]))
    hidden = "x".join(map(str, report["config"]["model"]["g_hidden"]))
    return (f"**The smallest generator that covers all modes on every fresh seed with mean high "
            f"quality >= {ALL_MODES_HQ:.0%}: G {hidden}, {_params(report):,.0f} parameters** "
            f"(`{path.as_posix()}`).")


def _all_modes(report: dict[str, Any]) -> bool:
    """Every seed covered every mode of its dataset (25 for grid25, 8 for ring8)."""
    from pipeline.data import DATASETS

    data = report["config"]["data"]
    n = len(DATASETS[data["name"]].centres(data["radius"]))  # type: ignore[union-attr]
    return all(p["modes_covered"] >= n for p in report["per_seed"])


# The 2-D mixtures block: PacGAN's protocol columns per mixture, published rows first.
MIXTURES = ("ring8", "grid25")
MIXTURE_COLUMNS = ("modes_covered", "high_quality", "reverse_kl")
# Lin et al. 2018 (PacGAN), Table 1: 2,500 samples, the mean of 10 runs; (modes, HQ, reverse
# KL) as the paper prints them.
PUBLISHED_MIXTURE_ROWS = (
    ("GAN (PacGAN Table 1)", {"ring8": ("6.3", "98.2%", "0.45"),
                              "grid25": ("17.3", "94.8%", "0.70")}),
    ("PacGAN2", {"ring8": ("7.9", "95.6%", "0.07"), "grid25": ("23.8", "91.3%", "0.13")}),
    ("PacGAN4", {"ring8": ("7.8", "95.9%", "0.07"), "grid25": ("24.8", "93.6%", "0.04")}),
)
# (title, file name per mixture, whether one mixture's file is enough): a row that needs both
# files and lacks one is left out; a one-mixture row shows "-" for the other.
MIXTURE_ROWS = (
    ("seed article's GAN (`conf/seed_article.yaml`, 20 epochs of the 100k points)",
     "seed_article_{}", False),
    ("**this project**: best of its study (`reeval`)", "{}", False),
    ("**this project**: the study's winner tuned by hand ({})", "{}_tuned", True),
)


def mixture_cell(report: dict[str, Any], metric: str) -> str:
    """mean ± standard error, and the worst seed (the fewest modes, the lowest high quality,
    the highest reverse KL)."""
    mean, se = report["mean"][metric], report["stderr"][metric]
    values = [p[metric] for p in report["per_seed"]]
    worst = max(values) if METRICS[metric].better == "lower" else min(values)
    if metric == "modes_covered":
        return f"{mean:.2f} ± {se:.2f} (min {worst:.0f})"
    if metric == "high_quality":
        return f"{100 * mean:.1f} ± {100 * se:.1f}% (min {100 * worst:.1f}%)"
    return f"{mean:.4f} ± {se:.4f} (worst {worst:.4f})"


def floor_cell(floor: dict[str, float], metric: str) -> str:
    if metric not in floor:
        return "-"
    value = floor[metric]
    return {"modes_covered": f"{value:.0f}", "high_quality": f"{100 * value:.1f}%"}.get(
        metric, f"{value:.4f}")


def mixtures_table(results: Path) -> str | None:
    """PacGAN's rows, then each re-evaluated row that has both mixtures' files (seeds in the
    title), then the real samples' floor from the project's own files; None without them."""
    project = [results / f"{name}.json" for name in MIXTURES]
    if not all(p.exists() for p in project):
        return None
    own = [json.loads(p.read_text()) for p in project]
    floors = [r.get("floor") or {} for r in own]
    head = ["", *[f"{m} {label}" for m in MIXTURES
                  for label in ("modes", "high quality", "reverse KL")]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for title, published in PUBLISHED_MIXTURE_ROWS:
        lines.append("| " + " | ".join([title, *[c for m in MIXTURES for c in published[m]]])
                     + " |")
    for title, pattern, partial in MIXTURE_ROWS:
        paths = [results / f"{pattern.format(m)}.json" for m in MIXTURES]
        if not (any if partial else all)(p.exists() for p in paths):
            continue
        reports = [json.loads(p.read_text()) if p.exists() else None for p in paths]
        counts = {m: len(r["seeds"]) for m, r in zip(MIXTURES, reports, strict=True) if r}
        seeds = (f"{next(iter(counts.values()))}" if len(set(counts.values())) == 1
                 else ", ".join(f"{m} {n}" for m, n in counts.items()))
        named = title.format(", ".join(f"`studies/best/{pattern.format(m)}.yaml`" for m in counts))
        lines.append("| " + " | ".join([f"{named}, {seeds} fresh seeds", *[
            mixture_cell(r, metric) if r else "-" for r in reports
            for metric in MIXTURE_COLUMNS]]) + " |")
    if any("drs" in r for r in own):  # a filter on G: its own row, never in place of G's
        lines.append("| " + " | ".join([f"{DRS_ROW}, acceptance " + ", ".join(
            f"{m} {100 * r['drs']['mean']['acceptance']:.0f}%" for m, r in zip(
                MIXTURES, own, strict=True) if "drs" in r), *[
            mixture_cell(r["drs"], metric) if "drs" in r else "-"
            for r in own for metric in MIXTURE_COLUMNS]]) + " |")
    if any(floors):
        lines.append("| real samples through the same metrics (the floor) | " + " | ".join(
            floor_cell(f, metric) for f in floors for metric in MIXTURE_COLUMNS) + " |")
    return "\n".join(lines)


DRS_ROW = ("the same seeds' generators through Discriminator Rejection Sampling (Azadi et al. "
           "2019; `eval.drs`: a filter on G's samples, not G)")


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
    mixtures = mixtures_table(Path(results))
    if mixtures is not None:
        blocks["mixtures"] = mixtures
    images = images_table(Path(results))
    if images is not None:
        blocks["fashion_mnist"] = images
    for name, paths in front_blocks(Path(results)).items():
        blocks[name] = front_table(paths)
        front_figure(paths, Path(results) / f"{name.removeprefix('front-')}-front.png")
    path = Path(readme)
    path.write_text(rewrite(path, blocks))
    return sorted(blocks)
