"""The model file of a checkpoint logged as an MLflow model (MLflow's "models from code")."""

import mlflow.models

from vlmexp.tracking.pyfunc_model import CheckpointModel

mlflow.models.set_model(CheckpointModel())
