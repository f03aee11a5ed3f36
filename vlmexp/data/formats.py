"""A task's data formats: ``data.formats`` maps each ``data.format`` name to a reader class
(``_target_``), so a new format is a class plus one line of YAML, never a branch in code."""

from __future__ import annotations

from vlmexp.errors import ConfigError


def data_format(data_cfg, default: str):
    """The reader ``data.formats[data.format]`` names (``default`` when data.format is null)."""
    from hydra.utils import instantiate

    name = data_cfg.get("format") or default
    formats = data_cfg.get("formats") or {}
    if name not in formats:
        raise ConfigError(f"data.format={name}: expected one of {', '.join(sorted(formats)) or '(none configured)'}"
                          " (data.formats.<name>._target_ adds one)")
    return instantiate(formats[name])
