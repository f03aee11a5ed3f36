"""vlmexp: config-driven experiments with vision-language models.

Importing the package is cheap on purpose: composing a config (``--cfg job``) must not pull in
torch, transformers or mlflow. Heavy imports live inside the functions that need them.
"""

__version__ = "0.1.0"
