"""A fine-tuned checkpoint as an MLflow model (MLflow's "models from code": MLflow runs this file).

``mlflow.pyfunc.load_model("models:/<name>/<version>").predict([{"image": path, "question": text}])``
answers each question about its image as ``load_vlm(checkpoint).answer_question`` does.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow.models
import mlflow.pyfunc


class CheckpointModel(mlflow.pyfunc.PythonModel):
    """The artifacts ``checkpoint`` (the folder) and ``config`` (the run's resolved_config.yaml)."""

    def load_context(self, context) -> None:
        from vlmexp.api import load_vlm

        # load_vlm reads the run's config beside the checkpoint folder
        folder = Path(tempfile.mkdtemp(prefix="vlmexp-model-"))
        (folder / "checkpoint").symlink_to(Path(context.artifacts["checkpoint"]).resolve(), target_is_directory=True)
        (folder / "resolved_config.yaml").symlink_to(Path(context.artifacts["config"]).resolve())
        self.vlm = load_vlm(folder / "checkpoint")

    def predict(self, context, model_input: list[dict[str, str]], params=None) -> list[str]:
        rows = list(model_input)
        return self.vlm.answer_question([r["image"] for r in rows], [r["question"] for r in rows])


mlflow.models.set_model(CheckpointModel())
