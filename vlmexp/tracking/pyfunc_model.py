"""Logging a fine-tuned checkpoint as an MLflow model: the pyfunc of ``vlmexp/mlflow_model.py``, which
loads it with :func:`vlmexp.load_vlm` (that file is above this layer: it is named by path, never imported).
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc

MODEL_CODE = Path(__file__).parents[1] / "mlflow_model.py"
#: The packages a loaded model needs (the environment MLflow records with it).
REQUIREMENTS = ("vlmexp", "torch", "transformers", "peft", "accelerate", "mlflow", "hydra-core")


def requirements() -> list[str]:
    from vlmexp.provenance import package_versions

    versions = package_versions()
    return [f"{name}=={versions[name]}" for name in REQUIREMENTS if versions.get(name) not in (None, "not installed")]


def log_checkpoint_model(run_id: str, checkpoint: Path, config: Path, name: str = "model",
                         registered_model_name: str | None = None) -> None:
    """Log ``checkpoint`` as the run's model (and register it under ``registered_model_name``)."""
    from mlflow.models import Model

    # "models from code": the model is MODEL_CODE's CheckpointModel, named by path, never pickled
    Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, python_model=str(MODEL_CODE),
              artifacts={"checkpoint": str(checkpoint), "config": str(config)}, pip_requirements=requirements(),
              registered_model_name=registered_model_name, run_id=run_id)
