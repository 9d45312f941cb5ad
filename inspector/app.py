"""Composition root: config and rules in, a ready engine out."""

from __future__ import annotations

from pathlib import Path

from .config import Config, load_config
from .engine import Engine
from .rules import RuleSet, load_rules


def load(config_path: str | Path | None = None, rules_path: str | Path | None = None) -> tuple[Config, RuleSet]:
    """Load and validate config and rules; raises ConfigError / RuleError."""
    config = load_config(config_path, rules_path)
    return config, load_rules(config.rules)


def build_engine(config_path: str | Path | None = None, rules_path: str | Path | None = None,
                 **overrides: object) -> Engine:
    """A ready :class:`~inspector.engine.Engine` from the config and rules at these paths, with ``overrides`` of config
    fields (e.g. ``mode="alert"``); raises ConfigError / RuleError.
    """
    config, rules = load(config_path, rules_path)
    if overrides:
        config = config.with_overrides(**overrides)
    return Engine(config, rules)
