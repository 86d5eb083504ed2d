"""A table generator as an MLflow pyfunc model: latent vectors in, rows in the original schema out.

``mlflow.pyfunc.load_model("models:/<study>-generator@champion").predict(z)`` returns a DataFrame
with the table's own columns, dtypes and categories: the TorchScript generator, then the fitted
TableTransformer (from its JSON) decodes its output. The model carries this package's code
(``code_paths``), so it loads where the project is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np


class TableGenerator(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    def load_context(self, context: Any) -> None:
        import torch

        from pipeline.tables.transform import TableTransformer

        self.generator = torch.jit.load(context.artifacts["generator"], map_location="cpu")
        self.generator.eval()
        encoding = json.loads(Path(context.artifacts["encoding"]).read_text())
        self.transformer = TableTransformer.from_dict(encoding)

    # np.ndarray in: a hint MLflow accepts without inferring a schema from it (the signature
    # logged with the model gives the schema); other hints, or none, make it warn.
    def predict(self, context: Any, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> Any:
        import torch

        z = np.asarray(model_input, dtype=np.float32)
        with torch.no_grad():
            encoded = self.generator(torch.from_numpy(z)).numpy()
        return self.transformer.inverse_transform(encoded)
