"""Compose the command line's config once before Hydra does, to report mistakes in one line.

Hydra's own messages for an unknown option or a value of the wrong type span several lines; this
turns them into ``error: <key>=<value>: <reason>`` and exit code 2. Sweeps (``a=1,2``) are checked
one value at a time.
"""

from __future__ import annotations

import re
import sys

_NO_CHECK = {"--help", "-h", "--hydra-help", "--version", "--info", "-i", "--shell-completion", "-sc"}
_TAKES_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun"}


def command_line_overrides(argv: list[str]) -> list[str] | None:
    """The overrides among Hydra's arguments, or None when this invocation composes nothing."""
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _NO_CHECK:
            return None
        if arg in _TAKES_VALUE:
            skip = True
        elif not arg.startswith("-") and (arg.startswith("hydra.searchpath=")  # where extra configs live
                                          or not arg.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))):
            overrides.append(arg)
    return overrides


def one_line(exc: Exception) -> str:
    """The gist of a Hydra/OmegaConf error on one line."""
    text = str(exc) + (f"\n{exc.__cause__}" if exc.__cause__ else "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    message = lines[0] if lines else type(exc).__name__
    message = re.sub(r"^Error merging override ", "", message)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", message)
    options = []
    if "Available options" in text:
        start = next(i for i, ln in enumerate(lines) if ln.startswith("Available options"))
        for ln in lines[start + 1:]:
            if ln.startswith("Config search path") or ":" in ln:
                break
            if not ln.startswith("_"):  # _base and the like are what options extend, not options
                options.append(ln)
    if missing:
        group, option = missing.groups()
        return f"{group}={option}: no such option" + (f" (available: {', '.join(options)})" if options else "")
    full_key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), None)
    detail = next((ln for ln in lines[1:] if not ln.startswith(("full_key", "reference_type", "object_type"))), "")
    prefix = f"{full_key}: " if full_key and not message.startswith(f"{full_key}=") else ""
    return f"{prefix}{message}" + (f" ({detail})" if detail and detail != message else "")


def check_overrides(overrides: list[str], compose) -> str | None:
    """Compose with each sweep value in turn; the first failure as one line, or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        return one_line(exc)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    variants = [fixed]
    for o in parsed:
        if o.is_sweep_override():
            variants += [fixed + [f"{o.get_key_element()}={v}"] for v in o.sweep_string_iterator()]
    for variant in variants:
        try:
            compose(variant)
        except Exception as exc:
            return one_line(exc)
    return None


def preflight(conf_dir: str) -> None:
    overrides = command_line_overrides(sys.argv[1:])
    if overrides is None:
        return
    from hydra import compose, initialize_config_dir

    def compose_once(variant: list[str]):
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            compose(config_name="config", overrides=variant)

    problem = check_overrides(overrides, compose_once)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
