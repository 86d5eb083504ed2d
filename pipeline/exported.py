"""An export folder read back: its generator and config, samples drawn and written to a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import ConfigError
from pipeline.outputs import check_output_file
from pipeline.plots import samples_png
from pipeline.tables.transform import TableTransformer

DRS_FILE = "drs_discriminator.pt"  # export --drs: D calibrated for rejection sampling (drs.py)


class ExportError(ConfigError):
    """No finished trial, missing weights, or an incomplete export folder."""


def mode_centres(config: dict[str, Any]) -> np.ndarray | None:
    """The mixture's mode centres, as the trial's dataset had them (drawn under 2-D samples)."""
    centres = config.get("generator", {}).get("centres")
    return None if centres is None else np.asarray(centres)


def load_export(folder: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    folder = Path(folder)
    missing = [f for f in ("generator.pt", "config.json") if not (folder / f).exists()]
    if missing:
        raise ExportError(f"{folder}: incomplete export folder, missing {', '.join(missing)} "
                          "(make one with `make export`)")
    try:
        config = json.loads((folder / "config.json").read_text())
        int(config["generator"]["latent_dim"])
        generator = torch.jit.load(str(folder / "generator.pt"))
    except Exception as exc:
        raise ExportError(f"{folder}: corrupt export folder ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); export again "
                          f"with `make export`") from None
    return generator, config


def load_for_sampling(folder: str | Path, n: int) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The export's G and config, once ``n`` is known to ask for samples."""
    if n < 1:
        raise ExportError(f"-n {n}: expected at least one sample")
    return load_export(folder)


def sample_export(folder: str | Path, n: int, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    generator, config = load_for_sampling(folder, n)
    z = torch.randn(n, int(config["generator"]["latent_dim"]),
                    generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            return generator(z).numpy(), config
    except Exception as exc:
        raise ExportError(f"{folder}: generator.pt does not match config.json ({exc})") from None


def drs_sample_export(folder: str | Path, n: int, seed: int = 0,
                      ) -> tuple[np.ndarray, dict[str, Any], float]:
    """``n`` of the export's G's samples that its calibrated D accepts (drs.py), drawn as
    ``eval.drs`` draws them; its config; the share of G's samples accepted."""
    from pipeline.drs import rejection_sample
    from pipeline.prepare import EVAL_BATCH

    folder = Path(folder)
    generator, config = load_for_sampling(folder, n)
    if not config.get("drs"):
        raise ExportError(f"{folder}: exported without --drs (no calibrated discriminator); "
                          "export again with `python -m pipeline export --study NAME --drs`")
    try:
        discriminator = torch.jit.load(str(folder / DRS_FILE))
    except Exception as exc:
        raise ExportError(f"{folder}: cannot load {DRS_FILE} ({type(exc).__name__}); export "
                          "again with --drs") from None
    try:
        samples, accepted = rejection_sample(generator, discriminator, n, seed=seed,
                                             batch=EVAL_BATCH)
    except ValueError as exc:
        raise ExportError(f"{folder}: {exc}") from None
    return samples.numpy(), config, accepted


TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
ARRAY_SUFFIXES = (".npy", ".csv", ".png")
SAMPLE_SUFFIXES = (".npy", ".csv", ".png", ".tsv", ".parquet")  # either kind: checked first


def check_samples_out(out: str | Path, config: dict[str, Any] | None = None) -> Path:
    """``sample --out``: a file that can be written, ending in a suffix that the export's kind
    takes (a table's rows, or an array); without ``config``, in one that either kind takes."""
    if config is None:
        return check_output_file(out, SAMPLE_SUFFIXES, kind="samples go to a file by its suffix")
    if config.get("generator", {}).get("table_encoding") is not None:
        return check_output_file(out, TABLE_SUFFIXES, kind="a table's rows go to a table file")
    return check_output_file(out, ARRAY_SUFFIXES, kind="this export's samples are an array, not "
                             "a table's rows")


def write_samples(samples: np.ndarray, config: dict[str, Any], out: str | Path) -> Path:
    """Samples to a file by its suffix; a table's rows are decoded into its own columns,
    dtypes and categories first (.csv, .tsv, .parquet)."""
    out = check_samples_out(out, config)
    suffix = out.suffix.lower()
    encoding = config.get("generator", {}).get("table_encoding")
    out.parent.mkdir(parents=True, exist_ok=True)
    if encoding is not None:
        rows = TableTransformer.from_dict(encoding).inverse_transform(samples)
        if suffix == ".parquet":
            rows.to_parquet(out, index=False)
        else:
            rows.to_csv(out, index=False, sep="\t" if suffix == ".tsv" else ",")
        return out
    if suffix == ".npy":
        with out.open("wb") as f:  # np.save(path) would add .npy to a name ending .NPY
            np.save(f, samples)
    elif suffix == ".csv":
        np.savetxt(out, samples, delimiter=",", fmt="%.7g")
    else:
        shape = config.get("generator", {}).get("image_shape")
        out.write_bytes(samples_png(samples, image_shape=tuple(shape) if shape else None,
                                    centres=mode_centres(config)))
    return out
