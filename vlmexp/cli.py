"""``python -m vlmexp``: Hydra entry point. Errors a user can fix print one line and exit non-zero."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vlmexp.config.experiments import register_experiments
from vlmexp.config.schema import register_configs
from vlmexp.errors import VlmexpError
from vlmexp.paths import conf_dir

log = logging.getLogger("vlmexp")


def _job(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import InstantiationException
    from hydra.types import RunMode

    from vlmexp.runner import run

    hc = HydraConfig.get()
    sweep = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None
    try:
        run(cfg, output_dir=Path(hc.runtime.output_dir), overrides=list(hc.overrides.task), sweep=sweep)
    except (VlmexpError, InstantiationException) as exc:
        # instantiate() wraps what a plugin's constructor raises (a task rejecting its config keys)
        error = exc.__cause__ if isinstance(exc, InstantiationException) else exc
        if not isinstance(error, VlmexpError):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


def main() -> None:
    register_configs()
    register_experiments()
    hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")(_job)()
