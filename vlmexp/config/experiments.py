"""Presets in the top-level ``experiments/`` folder, selectable as ``+experiment=NAME``.

Each file is registered in Hydra's ConfigStore under the ``experiment`` group with the package its
``# @package`` header names, so the folder needs no place inside ``conf/``.
"""

from __future__ import annotations

import re

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from vlmexp.paths import experiments_dir

_PACKAGE = re.compile(r"^#\s*@package\s+(\S+)", re.MULTILINE)


def register_experiments() -> list[str]:
    cs = ConfigStore.instance()
    names = []
    for path in sorted(experiments_dir().glob("*.yaml")):
        text = path.read_text()
        header = _PACKAGE.search(text)
        cs.store(group="experiment", name=path.stem, node=OmegaConf.create(text),
                 package=header.group(1) if header else "_global_")
        names.append(path.stem)
    return names
