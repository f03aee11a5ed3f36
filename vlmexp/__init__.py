"""vlmexp: config-driven experiments with vision-language models.

Importing the package is cheap on purpose: composing a config (``--cfg job``) must not pull in
torch, transformers or mlflow. Heavy imports live inside the functions that need them.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_vlm":  # imported on first use: the Python API loads torch and transformers
        from vlmexp.api import load_vlm

        return load_vlm
    raise AttributeError(f"module 'vlmexp' has no attribute {name!r}")
