"""Export the best trial's generator: Model Registry alias, TorchScript, ONNX, model card.

The weights are the ones the best trial trained (downloaded from its MLflow run), not a retrain.
The export folder needs no project code to use: ``torch.jit.load("generator.pt")`` or
onnxruntime on ``generator.onnx``, with ``config.json`` giving the latent size and output scale.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import ConfigError
from pipeline.metrics.registry import VAL_PREFIX
from pipeline.networks import Generator
from pipeline.plots import samples_png
from pipeline.study.store import RUN_ATTR, best_trial, find_study
from pipeline.tracking import get_client, tracking_uri

ALIAS = "champion"


class ExportError(ConfigError):
    """No finished trial, missing weights, or an incomplete export folder."""


def export_best(study_name: str, out_dir: str | Path | None = None, *,
                storage: str | None = None) -> Path:
    study, defn = find_study(study_name, storage)
    best = best_trial(study)
    if best is None:
        raise ExportError(f"study {study_name}: no complete trial to export (run `make sweep`)")
    run_id = best.user_attrs.get(RUN_ATTR)
    if not run_id:
        raise ExportError(f"study {study_name}: trial {best.number} has no MLflow run recorded")
    client = get_client(tracking_uri(defn.base.tracking.tracking_uri))
    run = client.get_run(run_id)

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(client.download_artifacts(run_id, "model", tmp))
        except Exception as exc:
            raise ExportError(f"run {run_id}: cannot download its model/ artifacts ({exc}); "
                              "was it trained with tracking.log_weights=false?") from None
        meta = json.loads((local / "generator.json").read_text())
        generator = Generator(**meta["generator_kwargs"])
        generator.load_state_dict(torch.load(local / "generator.pt", weights_only=True))
    generator.eval()

    out = Path(out_dir) if out_dir else Path("exports") / study_name
    out.mkdir(parents=True, exist_ok=True)
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith(VAL_PREFIX)}
    metrics["objective"] = float(best.value)  # type: ignore[arg-type]
    config = {
        "generator_kwargs": meta["generator_kwargs"],
        "latent_dim": generator.latent_dim,
        "out_dim": generator.out_dim,
        "latent_distribution": "standard normal N(0, I)",
        "dataset": meta["dataset"],
        "image_shape": meta["image_shape"],
        "output_scale": meta["output_scale"],
        "centres": meta["centres"],
        "study": study_name,
        "trial": best.number,
        "mlflow_run_id": run_id,
        "objective": {"metric": defn.spec.objective.metric,
                      "direction": defn.spec.objective.direction, "value": best.value},
        "params": best.params,
    }
    write_torchscript(generator, out / "generator.pt")
    write_onnx(generator, out / "generator.onnx")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    n = 64 if meta["image_shape"] else 2500
    with torch.no_grad():
        samples = generator(torch.randn(n, generator.latent_dim,
                                        generator=torch.Generator().manual_seed(0)))
    (out / "samples.png").write_bytes(samples_png(
        samples.numpy(), image_shape=tuple(meta["image_shape"]) if meta["image_shape"] else None,
        centres=_centres(config), title=f"{study_name}: trial {best.number}"))
    (out / "MODEL_CARD.md").write_text(model_card(config, metrics))
    register(client, study_name, run_id, best.number, metrics)
    return out


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
    """``<study>-generator`` in the Model Registry, alias ``champion`` on this version."""
    from mlflow.exceptions import MlflowException

    name = f"{study_name}-generator"
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"Best generator of study {study_name}")
    tags = {k.replace("/", "_"): f"{v:.6g}" for k, v in metrics.items()}
    tags.update(run_id=run_id, trial=str(trial))
    version = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id,
                                          tags=tags)
    client.set_registered_model_alias(name, ALIAS, version.version)
    return int(version.version)


def model_card(config: dict[str, Any], metrics: dict[str, float]) -> str:
    rows = "\n".join(f"| `{k}` | {v:.6g} |" for k, v in sorted(metrics.items()))
    kw = config["generator_kwargs"]
    shape = config["image_shape"]
    reshape = f"; reshape to {tuple(shape)} for images" if shape else ""
    return f"""# Generator: study `{config['study']}`, trial {config['trial']}

Fully connected GAN generator trained on **{config['dataset']}** (MLflow run
`{config['mlflow_run_id']}`), selected as the best trial by {config['objective']['direction']}
`{config['objective']['metric']}` (value {config['objective']['value']:.6g}).

- Architecture: MLP {kw['latent_dim']} -> {' -> '.join(map(str, kw['hidden']))} ->
  {kw['out_dim']}, activation {kw['activation']}, normalization {kw['norm']}, output
  {kw['output_activation']}.
- Input: z of shape (n, {config['latent_dim']}) drawn from {config['latent_distribution']}.
- Output: samples of shape (n, {config['out_dim']}) in {config['output_scale']}{reshape}.

## Metrics (last evaluation)
FID and KID for images use the features of an MLP classifier this project trains on the
dataset (not Inception): compare them only with runs that used the same feature extractor
(MLflow tag `fid_features`). For 2-D mixtures the features are the coordinates.

| metric | value |
|---|---|
{rows}

## Load
```python
import torch
g = torch.jit.load("generator.pt")
samples = g(torch.randn(16, {config['latent_dim']}))
```
or with onnxruntime: `InferenceSession("generator.onnx").run(None, {{"z": z}})`, or
`python -m pipeline sample EXPORT_DIR -n 1000 --out samples.npy`.
"""


def _centres(config: dict[str, Any]) -> np.ndarray | None:
    """The mixture's mode centres, as the trial's dataset had them (drawn under 2-D samples)."""
    return None if config.get("centres") is None else np.asarray(config["centres"])


# --- sampling from an export ------------------------------------------------------------------


def load_export(folder: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    folder = Path(folder)
    missing = [f for f in ("generator.pt", "config.json") if not (folder / f).exists()]
    if missing:
        raise ExportError(f"{folder}: incomplete export folder, missing {', '.join(missing)} "
                          "(make one with `make export`)")
    config = json.loads((folder / "config.json").read_text())
    return torch.jit.load(str(folder / "generator.pt")), config


def sample_export(folder: str | Path, n: int, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    generator, config = load_export(folder)
    z = torch.randn(n, int(config["latent_dim"]), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return generator(z).numpy(), config


def write_samples(samples: np.ndarray, config: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, samples)
    elif out.suffix == ".csv":
        np.savetxt(out, samples, delimiter=",", fmt="%.7g")
    elif out.suffix == ".png":
        shape = config.get("image_shape")
        out.write_bytes(samples_png(samples, image_shape=tuple(shape) if shape else None,
                                    centres=_centres(config)))
    else:
        raise ExportError(f"--out {out}: expected a .npy, .csv or .png file")
    return out
