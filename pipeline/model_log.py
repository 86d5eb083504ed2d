"""The trained generator as an MLflow model in its run, and what export reads back from it.

``generator/`` is an MLflow model (TorchScript, a signature and an input example) that loads with
``mlflow.pyfunc.load_model`` without this project; ``model/`` holds the state dicts, the
constructor arguments, the resolved config and, for tables, the fitted encoding (JSON, never a
pickle) that turns the generator's output back into rows.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from pipeline.config import Config
from pipeline.dataset import Dataset
from pipeline.module import GANModule
from pipeline.prepare import discriminator_kwargs, generator_kwargs
from pipeline.tracking import RunLogger, mask_secrets

MODEL_ARTIFACT = "generator"  # the MLflow model in every run: runs:/<run_id>/generator
WEIGHTS_ARTIFACT = "model"  # state dicts, constructor arguments, config: runs:/<run_id>/model
TABLE_ENCODING_FILE = "table_encoding.json"  # in model/: the fitted TableTransformer
INPUT_EXAMPLE_ROWS = 4


def log_weights(run: RunLogger, module: GANModule, cfg: Config, dataset: Dataset) -> None:
    """The evaluated generator (the EMA one when enabled) as ``generator/`` and ``model/``."""
    import mlflow.pytorch

    generator = module.evaluated_generator
    was_training = generator.training
    generator.eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / WEIGHTS_ARTIFACT
        folder.mkdir()
        torch.save(generator.state_dict(), folder / "generator.pt")
        torch.save(module.discriminator.state_dict(), folder / "discriminator.pt")
        meta = {
            "generator_kwargs": generator_kwargs(cfg.model, dataset),
            "discriminator_kwargs": discriminator_kwargs(cfg.model, dataset),
            "dataset": dataset.name,
            "kind": dataset.kind,
            "image_shape": list(dataset.image_shape) if dataset.image_shape else None,
            "output_scale": OUTPUT_SCALES[dataset.kind],
            "centres": None if dataset.centres is None else dataset.centres.tolist(),
        }
        (folder / "generator.json").write_text(json.dumps(meta, indent=2))
        resolved = cfg.to_dict()
        resolved["tracking"]["tracking_uri"] = mask_secrets(resolved["tracking"]["tracking_uri"])
        (folder / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        if dataset.table is not None:
            (folder / TABLE_ENCODING_FILE).write_text(
                json.dumps(dataset.table.transformer.to_dict()))
        run.log_dir(folder, WEIGHTS_ARTIFACT)

        scripted = torch.jit.script(copy.deepcopy(generator).cpu())
        example = torch.randn(INPUT_EXAMPLE_ROWS, generator.latent_dim,
                              generator=torch.Generator().manual_seed(0)).numpy()
        model_dir = Path(tmp) / MODEL_ARTIFACT
        if dataset.table is not None:
            save_table_model(scripted, dataset, folder / TABLE_ENCODING_FILE, model_dir, example)
        else:
            # MLflow warns about pickle for any non-pt2 format; a TorchScript archive is what
            # makes the model loadable without this project's code (pt2 does not take it).
            with warnings.catch_warnings(), quiet_logger("mlflow.pytorch"):
                warnings.simplefilter("ignore")
                mlflow.pytorch.save_model(
                    scripted, str(model_dir), signature=generator_signature(
                        generator.latent_dim, dataset.dim),
                    input_example=example, pip_requirements=[TORCH_REQUIREMENT],
                    serialization_format="pickle")
        run.log_dir(model_dir, MODEL_ARTIFACT)
    generator.train(was_training)


TORCH_REQUIREMENT = f"torch=={torch.__version__.split('+')[0]}"


def save_table_model(scripted: torch.jit.ScriptModule, dataset: Dataset, encoding: Path,
                     model_dir: Path, example: Any) -> None:
    """A pyfunc whose predict(z) returns rows in the table's own schema (tables/pyfunc.py)."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import infer_signature

    from pipeline.tables.pyfunc import TableGenerator

    assert dataset.table is not None
    scripted_file = model_dir.parent / "generator_script.pt"
    torch.jit.save(scripted, str(scripted_file))
    with torch.no_grad():
        rows = dataset.table.transformer.inverse_transform(
            scripted(torch.from_numpy(example)).numpy())
    import numpy as np
    import scipy

    with warnings.catch_warnings(), quiet_logger("mlflow"):
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(
            str(model_dir), python_model=TableGenerator(),
            artifacts={"generator": str(scripted_file), "encoding": str(encoding)},
            code_paths=[str(PACKAGE_DIR)], signature=infer_signature(example, rows),
            input_example=example,
            pip_requirements=[TORCH_REQUIREMENT, f"pandas=={pd.__version__}",
                              f"numpy=={np.__version__}", f"scipy=={scipy.__version__}"])


PACKAGE_DIR = Path(__file__).resolve().parent  # pipeline/: the code a table's pyfunc carries


OUTPUT_SCALES = {
    "images": "[-1, 1] (images)",
    "points": "raw 2-D coordinates",
    "table": "encoded rows (model/table_encoding.json decodes them; `sample` writes rows)",
}


@contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def generator_signature(latent_dim: int, out_dim: int) -> Any:
    """z (n, latent_dim) float32 in, samples (n, out_dim) float32 out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, latent_dim))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, out_dim))]))
