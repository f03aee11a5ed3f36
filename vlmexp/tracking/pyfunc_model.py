"""A fine-tuned checkpoint as an MLflow model: a pyfunc that loads it with :func:`vlmexp.load_vlm`.

``mlflow.pyfunc.load_model("models:/<name>/<version>").predict([{"image": path, "question": text}])``
answers each question about its image as ``load_vlm(checkpoint).answer_question`` does.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow.pyfunc

#: The packages a loaded model needs (the environment MLflow records with it).
REQUIREMENTS = ("vlmexp", "torch", "transformers", "peft", "accelerate", "mlflow", "hydra-core")


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


def requirements() -> list[str]:
    from vlmexp.provenance import package_versions

    versions = package_versions()
    return [f"{name}=={versions[name]}" for name in REQUIREMENTS if versions.get(name) not in (None, "not installed")]


def log_checkpoint_model(run_id: str, checkpoint: Path, config: Path, name: str = "model",
                         registered_model_name: str | None = None) -> None:
    """Log ``checkpoint`` as the run's model (and register it under ``registered_model_name``)."""
    from mlflow.models import Model

    # "models from code": the model is this file's CheckpointModel, named by path, never pickled
    Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, python_model=str(Path(__file__).with_name(
              "pyfunc_entry.py")),
              artifacts={"checkpoint": str(checkpoint), "config": str(config)}, pip_requirements=requirements(),
              registered_model_name=registered_model_name, run_id=run_id)
