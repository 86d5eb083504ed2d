"""Export a trial's generator (the best, or the one chosen): Model Registry version, TorchScript,
ONNX, model card.

The weights are the ones the trial trained (from its MLflow run), not a retrain. The run
already holds them as an MLflow 3 logged model (``runs:/<run_id>/generator``: TorchScript, a
signature and an input example); export registers that model as ``<study>-generator`` with
alias ``champion``
(once per run: exporting again moves the alias, it adds no version), so that
``mlflow.pyfunc.load_model("models:/<study>-generator@champion").predict(z)`` works anywhere,
without this project. The export folder needs no project code either: ``torch.jit.load`` or
onnxruntime, with ``config.json`` holding the full resolved config and the generator's shapes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pipeline.config_load import config_from_dict, cut, mask_secrets
from pipeline.data import load_dataset
from pipeline.drs import CALIBRATION_STEPS, GAMMA_QUANTILE
from pipeline.errors import ConfigError
from pipeline.exported import DRS_FILE, ExportError, mode_centres
from pipeline.metrics.registry import VAL_PREFIX
from pipeline.model_card import ALIAS, LATENT, model_card
from pipeline.model_log import MODEL_ARTIFACT, TABLE_ENCODING_FILE, logged_model_id
from pipeline.networks import Discriminator, Generator
from pipeline.outputs import check_output_folder
from pipeline.plots import figure_png, samples_png, table_figure
from pipeline.prepare import drs_seed
from pipeline.study.choice import check_recorded, chosen_trial
from pipeline.study.store import RUN_ATTR, check_study_name, find_study
from pipeline.tables.transform import TableTransformer
from pipeline.tracking import open_store_for_reading, tracking_uri
from pipeline.train import calibrated_discriminator


def export_best(study_name: str, out_dir: str | Path | None = None, *,
                storage: str | None = None, force: bool = False, trial: int | None = None,
                pick: str | None = None, drs: bool = False) -> tuple[Path, int]:
    """Export the study's best trial (or the one ``trial`` or ``pick`` chooses: see
    study/choice.py) to ``out_dir`` (default exports/<study>/); returns the folder and the
    registered model version. The folder must be new, empty or an earlier export of the same
    run (``check_out_dir``), unless ``force``. ``drs``: also the trial's D, calibrated on the
    trial's data as ``eval.drs`` calibrates it, so that ``sample --drs`` filters G's samples."""
    check_study_name("--study", study_name)  # as find_study does: it names the default folder
    out = Path(out_dir) if out_dir else Path("exports") / study_name
    check_out_place(out, force=force)  # before the study is read: the path alone
    study, defn = find_study(study_name, storage)
    try:
        best = chosen_trial(study, defn, trial=trial, pick=pick)
    except ConfigError as exc:
        raise ExportError(str(exc)) from None
    run_id = best.user_attrs.get(RUN_ATTR)
    if not run_id:
        raise ExportError(f"study {study_name}: trial {best.number} has no MLflow run recorded")
    check_out_dir(out, run_id, force=force)  # before anything is registered or written
    uri = tracking_uri(defn.base.tracking.tracking_uri)
    client = open_store_for_reading(uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise ExportError(f"study {study_name}: the best trial's run {run_id} is not in the "
                          f"MLflow store {mask_secrets(uri)} (was the store deleted or "
                          f"replaced?)") from None
    check_recorded(best, defn, client)  # before anything is registered or written

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(client.download_artifacts(run_id, "model", tmp))
            meta = json.loads((local / "generator.json").read_text())
            import yaml

            resolved = yaml.safe_load((local / "config.yaml").read_text())
            generator = Generator(**meta["generator_kwargs"])
            generator.load_state_dict(torch.load(local / "generator.pt", weights_only=True))
            encoding = (json.loads((local / TABLE_ENCODING_FILE).read_text())
                        if meta.get("kind") == "table" else None)
            discriminator = Discriminator(**meta["discriminator_kwargs"]) if drs else None
            if discriminator is not None:
                discriminator.load_state_dict(torch.load(local / "discriminator.pt",
                                                         weights_only=True))
        except Exception as exc:
            raise ExportError(f"run {run_id}: cannot read its model/ artifacts ({cut(str(exc))})"
                              f"; was it trained with tracking.log_weights=false?") from None
    generator.eval()
    drs_d = None if discriminator is None else drs_discriminator(resolved, discriminator,
                                                                 generator)
    # config.json travels with the model: no password of the store in it
    resolved["tracking"] = {k: mask_secrets(v) for k, v in resolved.get("tracking", {}).items()}

    out.mkdir(parents=True, exist_ok=True)
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith(VAL_PREFIX)}
    metrics.update(defn.objective_metrics(best.values))
    version = register(client, study_name, run_id, best.number, metrics)
    config = {
        **resolved,  # data, model, train, eval, tracking: the full resolved config
        "generator": {
            "kwargs": meta["generator_kwargs"],
            "latent_dim": generator.latent_dim,
            "out_dim": generator.out_dim,
            "input": f"z: float32 array of shape (n, {generator.latent_dim}), {LATENT}",
            "output": f"float32 array of shape (n, {generator.out_dim}) in "
                      f"{meta['output_scale']}",
            "dataset": meta["dataset"],
            "image_shape": meta["image_shape"],
            "output_scale": meta["output_scale"],
            "centres": meta["centres"],
            # tables: the fitted TableTransformer (JSON) that decodes the output into rows
            "table_encoding": encoding,
        },
        "study": study_name,
        "trial": best.number,
        "mlflow_run_id": run_id,
        "registered_model": f"models:/{study_name}-generator/{version}",
        "objectives": [{"metric": o.metric, "direction": o.direction, "last_k": o.last_k,
                        "value": value} for o, value in zip(defn.objectives, best.values,
                                                            strict=True)],
        "chosen_by": (f"--trial {trial}" if trial is not None else f"--pick {pick}" if pick
                      else "the best trial"),
        "params": best.params,
        # sample --drs: the calibrated D beside G, and how it was calibrated
        "drs": None if drs_d is None else {
            "discriminator": DRS_FILE, "calibration_steps": CALIBRATION_STEPS,
            "gamma_quantile": GAMMA_QUANTILE, "seed": drs_seed(resolved["train"]["seed"])},
    }
    n = 64 if meta["image_shape"] else 2500
    with torch.no_grad():
        samples = generator(torch.randn(n, generator.latent_dim,
                                        generator=torch.Generator().manual_seed(0)))
    title = f"{study_name}: trial {best.number}"
    if encoding is not None:
        transformer = TableTransformer.from_dict(encoding)
        png = figure_png(table_figure(transformer.inverse_transform(samples.numpy()), None,
                                      transformer.categorical, title=title))
    else:
        png = samples_png(samples.numpy(), centres=mode_centres(config), title=title,
                          image_shape=tuple(meta["image_shape"]) if meta["image_shape"] else None)
    # what export writes into its folder; nothing else there is touched
    writers: dict[str, Callable[[Path], object]] = {
        "generator.pt": lambda p: write_torchscript(generator, p),
        "generator.onnx": lambda p: write_onnx(generator, p),
        "config.json": lambda p: p.write_text(json.dumps(config, indent=2)),
        "metrics.json": lambda p: p.write_text(json.dumps(metrics, indent=2, sort_keys=True)),
        "samples.png": lambda p: p.write_bytes(png),
        "MODEL_CARD.md": lambda p: p.write_text(model_card(config, metrics)),
    }
    if drs_d is not None:
        writers[DRS_FILE] = lambda p: torch.jit.script(drs_d).save(str(p))
    # config.json first: it marks the folder as this run's export (check_out_dir), so an
    # export stopped half-way can be run again into the same folder
    for name in sorted(writers, key=lambda f: f != "config.json"):
        write_replacing(out / name, writers[name])
    if drs_d is None:
        # an earlier --drs export of this run (check_out_dir) left its calibrated D: without it
        # the folder holds only what this export wrote
        (out / DRS_FILE).unlink(missing_ok=True)
    return out, version


def drs_discriminator(resolved: dict[str, Any], discriminator: Discriminator,
                      generator: Generator) -> torch.nn.Module:
    """The trial's D trained further with BCE against its final G on the trial's own training
    rows, with the calibration's settings and seed of ``eval.drs`` (train.rejection_sampled)."""
    try:
        cfg = config_from_dict({k: v for k, v in resolved.items() if k != "tracking"})
    except ConfigError as exc:
        raise ExportError(f"--drs: the run's config no longer loads ({cut(str(exc))})") from None
    if cfg.model.pack != 1:
        raise ExportError(f"--drs: needs model.pack 1 (the trial has {cfg.model.pack}): a packed "
                          "D scores packs of samples, not one sample")
    try:
        dataset = load_dataset(cfg.data, cfg.train.seed)
    except Exception as exc:
        raise ExportError(f"--drs: calibrating D needs the trial's data, which does not load "
                          f"here ({cut(str(exc))})") from None
    return calibrated_discriminator(cfg, discriminator, generator, dataset.train.float())


def check_out_dir(out: Path, run_id: str, *, force: bool = False) -> None:
    """``--out`` must be a new folder, an empty one or an earlier export of the same run (its
    config.json names the run): a one-line ExportError otherwise, before anything is
    registered or written. ``force`` writes into a non-empty folder or through a link; an
    existing file, or a place that cannot be written, is refused even then."""
    hint = "; give --force to write into it anyway"
    check_out_place(out, force=force)
    if force or not out.exists() or not any(out.iterdir()):
        return
    try:
        previous = json.loads((out / "config.json").read_text()).get("mlflow_run_id")
    except (OSError, ValueError, AttributeError):
        previous = None
    if not previous:
        raise ExportError(f"--out {out}: a non-empty folder that is not an export (no "
                          f"config.json naming a run); choose a new or empty folder{hint}")
    if previous != run_id:
        raise ExportError(f"--out {out}: holds the export of another run ({cut(str(previous))}"
                          f", not {run_id}); choose a new or empty folder{hint}")


def check_out_place(out: Path, *, force: bool = False) -> None:
    """What ``check_out_dir`` can tell from the path alone, before any study is read: not a
    link (unless ``force`` and it leads to a folder), not a file, under no file, writable."""
    if out.is_symlink() and not (force and out.exists()):
        raise ExportError(f"--out {out}: a symbolic link (to {cut(os.readlink(out))}); give "
                          f"the folder itself{', or --force to follow it' if out.exists() else ''}")
    try:
        check_output_folder(out)
    except ConfigError as exc:
        raise ExportError(str(exc)) from None


def write_replacing(path: Path, write: Callable[[Path], object]) -> None:
    """Written beside ``path`` and renamed over it: a link already at ``path`` is replaced,
    never followed, and a failure leaves no half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_torchscript(generator: Generator, path: Path) -> None:
    torch.jit.script(generator).save(str(path))


def write_onnx(generator: Generator, path: Path) -> None:
    z = torch.randn(2, generator.latent_dim)
    # The TorchScript-based exporter: a plain MLP needs nothing newer, and it takes 0.2 s where
    # the dynamo exporter takes 5 s.
    torch.onnx.export(generator, (z,), str(path), input_names=["z"], output_names=["samples"],
                      dynamic_axes={"z": {0: "n"}, "samples": {0: "n"}}, dynamo=False)


def register(client: Any, study_name: str, run_id: str, trial: int,
             metrics: dict[str, float]) -> int:
    """The run's logged MLflow model as a version of ``<study>-generator`` (the existing one if
    this run was registered before), with alias ``champion``."""
    from mlflow.exceptions import MlflowException

    name = f"{study_name}-generator"
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"Best generator of study {study_name}"
                                       f" (MLP GAN). Input: z float32 (n, latent_dim) from "
                                       f"N(0, I); output: samples float32.")
    found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if found:
        version = max(int(v.version) for v in found)
    else:
        tags = {k.replace("/", "_"): f"{v:.6g}" for k, v in metrics.items()}
        tags.update(run_id=run_id, trial=str(trial))
        # the run's logged model, so the registry links to it (older runs: the run's artifact)
        model_id = logged_model_id(client, run_id)
        source = f"models:/{model_id}" if model_id else f"runs:/{run_id}/{MODEL_ARTIFACT}"
        # MLflow's registry looks the logged model up through the global tracking URI, not
        # through this client's: point it at the same store while it does
        with global_tracking_uri(client.tracking_uri):
            version = int(client.create_model_version(
                name, source=source, run_id=run_id, tags=tags, model_id=model_id).version)
    client.set_registered_model_alias(name, ALIAS, str(version))
    return version


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` while inside; afterwards exactly as before,
    the MLFLOW_TRACKING_URI variable (which set_tracking_uri also writes) included."""
    import mlflow
    from mlflow.tracking._tracking_service import utils  # where MLflow keeps the global

    saved, saved_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)  # type: ignore[arg-type]  # None: unset
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env
