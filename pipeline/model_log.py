"""The trained generator as an MLflow model of its run, and what export reads back from it.

``generator`` is an MLflow 3 logged model (TorchScript, a signature and an input example), linked
to its run: the UI's Models tab lists it with its metrics, ``runs:/<run_id>/generator`` and
``models:/<model_id>`` load it with ``mlflow.pyfunc.load_model`` without this project. It is
created before training, so that every evaluation's metrics link to it, and deleted if the run
ends without weights (pruned, failed). ``model/`` (a run artifact) holds the state dicts, the
constructor arguments, the resolved config and, for tables, the fitted encoding (JSON, never a
pickle) that turns the generator's output back into rows.
"""

from __future__ import annotations

import contextlib
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
from pipeline.config_load import mask_secrets
from pipeline.dataset import Dataset
from pipeline.module import GANModule
from pipeline.prepare import discriminator_kwargs, generator_kwargs
from pipeline.run_log import RunLogger

MODEL_ARTIFACT = "generator"  # the MLflow model in every run: runs:/<run_id>/generator
WEIGHTS_ARTIFACT = "model"  # state dicts, constructor arguments, config: runs:/<run_id>/model
TABLE_ENCODING_FILE = "table_encoding.json"  # in model/: the fitted TableTransformer
INPUT_EXAMPLE_ROWS = 4


def start_logged_model(run: RunLogger) -> str:
    """The run's logged model, PENDING until its weights are logged; a resumed run finds its
    own instead of making a second."""
    client = run.client
    experiment = client.get_run(run.run_id).info.experiment_id
    found = logged_model_id(client, run.run_id, experiment)
    if found:
        return found
    return str(client.create_logged_model(experiment, name=MODEL_ARTIFACT,
                                          source_run_id=run.run_id,
                                          model_type="generator").model_id)


def logged_model_id(client: Any, run_id: str, experiment: str | None = None) -> str | None:
    """The id of the run's ``generator`` logged model, None for a run without one (a run
    trained before models were logged this way, or with tracking.log_weights=false)."""
    if experiment is None:
        experiment = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        [experiment], filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_ARTIFACT}'")
    return str(found[0].model_id) if found else None


def discard_logged_model(run: RunLogger, model_id: str) -> None:
    """A run that ends without weights leaves no empty model in the Models tab."""
    with contextlib.suppress(Exception):  # never hide the error that ended the run
        run.client.delete_logged_model(model_id)


def log_weights(run: RunLogger, module: GANModule, cfg: Config, dataset: Dataset,
                model_id: str) -> None:
    """The evaluated generator (the EMA one when enabled) as the logged model ``model_id``
    (then READY) and the run's ``model/``."""
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
        run.client.log_model_artifacts(model_id, str(model_dir))
        run.client.finalize_logged_model(model_id, "READY")
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
