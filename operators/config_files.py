"""Configuration errors and YAML reading shared by the settings and the pattern compiler.

A ``ConfigError`` carries a one-line message naming the file and the key; the CLI prints it as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, with a one-line message naming the file and key."""


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a missing or malformed file is a one-line ConfigError naming it."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None


def mapping(value: Any, where: str) -> dict[str, Any]:
    """``value`` if it is a mapping; otherwise a ConfigError naming ``where``."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping")
    return value


def only_fields(doc: dict[str, Any], allowed: set[str], where: str) -> None:
    """A ConfigError naming the first field of ``doc`` that is not ``allowed``."""
    unknown = sorted(str(k) for k in set(doc) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
