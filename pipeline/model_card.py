"""MODEL_CARD.md: what an export holds, how it was trained and chosen, and how to load it."""

from __future__ import annotations

from typing import Any

from pipeline.metrics.registry import VAL_PREFIX

ALIAS = "champion"
LATENT = "standard normal N(0, I), float32"


def model_card(config: dict[str, Any], metrics: dict[str, float]) -> str:
    rows = "\n".join(f"| `{k}` | {v:.6g} |" for k, v in sorted(metrics.items()))
    gen = config["generator"]
    kw = gen["kwargs"]
    shape = gen["image_shape"]
    reshape = f"; reshape each row to {tuple(shape)} for an image" if shape else ""
    if gen.get("table_encoding"):
        reshape = (". The registered MLflow model decodes them: its `predict(z)` returns a "
                   "DataFrame of rows with the table's own columns, dtypes and categories; "
                   "`python -m pipeline sample EXPORT_DIR -n 1000 --out rows.csv` writes them")
    objectives = config["objectives"]
    chosen = ("the best trial of the study by" if len(objectives) == 1 else
              f"by {config['chosen_by']} from the Pareto front of")
    headline = "\n".join(
        f"- **Headline value: `{o['metric']}` {o['value']:.6g}** ({o['direction']})" + (
            f" = the mean over the trial's last {o['last_k']} evaluations"
            if o["metric"].startswith(VAL_PREFIX) else "") for o in objectives)
    train, model = config["train"], config["model"]
    settings = "\n".join(f"| `{section}.{key}` | `{value}` |"
                         for section in ("data", "model", "train", "eval")
                         for key, value in config[section].items())
    drs = ("" if not config.get("drs") else f"""
Exported with `--drs`: `{config['drs']['discriminator']}` is the trial's discriminator trained
{config['drs']['calibration_steps']} more steps with BCE against this generator, for
Discriminator Rejection Sampling (Azadi et al. 2019): `python -m pipeline sample EXPORT_DIR
-n 1000 --drs --out samples.npy` keeps only the samples it accepts. A filter on the generator's
samples: the generator above is the raw one.
""")
    return f"""# Generator: study `{config['study']}`, trial {config['trial']}

Fully connected GAN generator trained on **{gen['dataset']}** (MLflow run
`{config['mlflow_run_id']}`, registered as `{config['registered_model']}`), selected as the best
{chosen} {', '.join(f"{o['direction']} `{o['metric']}`" for o in objectives)}.

{headline}

One evaluation is noisy, so the objectives average the last few; the table below shows the
*last* evaluation alone, so its values differ from the headline.

- Architecture: MLP {kw['latent_dim']} -> {' -> '.join(map(str, kw['hidden']))} ->
  {kw['out_dim']}, activation {kw['activation']}, normalization {kw['norm']}, output
  {kw['output_activation']}; discriminator {model['d_hidden']} with
  {model.get('d_activation') or model['activation']}.
- Training: loss {train['loss']}, Adam lr G {train['g_lr']:.3g} / D {train['d_lr']:.3g}, betas
  G {train['g_betas']} / D {train['d_betas']}, batch {train['batch_size']}, {train['epochs']}
  epochs, seed {train['seed']}, EMA decay {train.get('ema_decay', 0.0)}, learning-rate decay
  from {train.get('lr_decay_start', 1.0):.0%} of training.
- **Input**: `z`, a float32 array of shape (n, {gen['latent_dim']}) drawn from {LATENT}.
  float64 is rejected by the ONNX file and by the MLflow model's signature: cast first.
- **Output**: a float32 array of shape (n, {gen['out_dim']}) in {gen['output_scale']}{reshape}.

## Metrics (last evaluation)
FID and KID for images use the features of an MLP classifier this project trains on the
dataset (not Inception): compare them only with runs that used the same feature extractor
(MLflow tag `fid_features`). For 2-D mixtures the features are the coordinates.

| metric | value |
|---|---|
{rows}

## Every training setting (config.json holds the same, in full)

| setting | value |
|---|---|
{settings}

## Load
```python
import mlflow, numpy as np        # no project code needed
model = mlflow.pyfunc.load_model("models:/{config['study']}-generator@{ALIAS}")
samples = model.predict(np.random.randn(16, {gen['latent_dim']}).astype(np.float32))

import torch
g = torch.jit.load("generator.pt")
samples = g(torch.randn(16, {gen['latent_dim']}))
```
or with onnxruntime: `InferenceSession("generator.onnx").run(None, {{"z": z}})` (z float32), or
`python -m pipeline sample EXPORT_DIR -n 1000 --out samples.npy`, or serve it:
`mlflow models serve -m models:/{config['study']}-generator@{ALIAS} --env-manager local`.
{drs}"""
