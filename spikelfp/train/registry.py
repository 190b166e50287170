"""The trainer registry: names -> trainers, with the config keys each one owns.

A trainer is one file plus one registration::

    register_trainer(TrainerSpec(
        name="delta", build=DeltaTrainer, help="delta rule on the output layer only",
        options=(Option("delta_gain", 1.0, "scale of the update", kind=float, minimum=0.0),),
    ))

Config validation, the CLI's ``--trainer`` choices, its flags for the trainers' keys and the
help text all come from here. The keys of every registered trainer are valid in any config
(a config may carry keys for a trainer it does not use, e.g. after switching ``trainer``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import ConfigError

_MISSING = object()


@dataclass(frozen=True)
class Option:
    """One config key owned by a trainer.

    ``kind``: int, float, str or bool; ``choices``: allowed values (None may be one of them);
    ``minimum`` / ``strict``: lower bound (strict: excluded); ``maximum``: upper bound (included);
    floats must be finite; ``nullable``: None is allowed;
    ``check``: a function ``value -> value`` raising :class:`ConfigError` (for anything else);
    ``flag``: the CLI flag (default ``--`` + key with ``-``); ``nargs`` for list values.
    """

    key: str
    default: Any
    help: str
    kind: Optional[type] = None
    choices: Optional[Tuple[Any, ...]] = None
    minimum: Optional[float] = None
    strict: bool = False
    maximum: Optional[float] = None
    nullable: bool = False
    check: Optional[Callable[[Any], Any]] = None
    flag: Optional[str] = None

    def cli_flag(self) -> str:
        return self.flag or "--" + self.key.replace("_", "-")

    def validate(self, value: Any) -> Any:
        """The value, normalized; a one-line :class:`ConfigError` naming the key if not allowed."""
        k = self.key
        if value is None and (self.nullable or (self.choices and None in self.choices)):
            return None
        if self.check is not None:
            return self.check(value)
        if self.choices is not None:
            if value not in self.choices:
                shown = [c for c in self.choices if c is not None]
                raise ConfigError(f"config key {k!r}: {value!r} is not allowed; use one of {shown}")
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"config key {k!r}: {value!r} must be true or false")
            return value
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"config key {k!r}: {value!r} is not a number")
            if self.kind is int and float(value) != int(value):
                raise ConfigError(f"config key {k!r}: {value!r} must be an integer")
            if not math.isfinite(value):
                raise ConfigError(f"config key {k!r}: {value} is not a finite number")
            value = self.kind(value)
            lo, hi = self.minimum, self.maximum
            if lo is not None and (value < lo or (self.strict and value == lo)):
                bound = f"{'>' if self.strict else '>='} {lo}" + (" (or null)" if self.nullable else "")
                raise ConfigError(f"config key {k!r}: {value} is out of range; it must be {bound}")
            if hi is not None and value > hi:
                raise ConfigError(f"config key {k!r}: {value} is out of range; it must be <= {hi:g}")
            return value
        if self.kind is str and not isinstance(value, str):
            raise ConfigError(f"config key {k!r}: {value!r} must be a string")
        return value


@dataclass(frozen=True)
class TrainerSpec:
    """A registered trainer.

    build: ``build(cfg, net, context) -> trainer`` (usually the trainer class);
    help: one line for ``--help``; options: the config keys it owns;
    check: optional ``check(cfg, net, context)`` run before training starts (raise
    :class:`ConfigError` with one line for a network or data set the trainer cannot handle);
    defaults: values of base config keys this trainer prefers (e.g. its learning rate), used
    where neither the YAML file nor a flag sets the key.
    """

    name: str
    build: Callable[..., Any]
    help: str
    options: Tuple[Option, ...] = field(default_factory=tuple)
    check: Optional[Callable[..., None]] = None
    defaults: Mapping[str, Any] = field(default_factory=dict)


_TRAINERS: Dict[str, TrainerSpec] = {}
_BASE_KEYS: set = set()


def set_base_keys(keys: Sequence[str]) -> None:
    """The loop's own config keys (a trainer may not claim one)."""
    _BASE_KEYS.update(keys)


def register_trainer(spec: TrainerSpec, replace: bool = False) -> TrainerSpec:
    """Add a trainer under ``spec.name``. Its option keys may be shared with other trainers only
    with the same default (e.g. two trainers reading ``epsilon``)."""
    if not spec.name or not spec.name.replace("_", "").isalnum():
        raise ValueError(f"trainer name {spec.name!r}: use letters, digits and '_'")
    if spec.name in _TRAINERS and not replace:
        raise ValueError(f"trainer {spec.name!r} is already registered")
    owned = {o.key: o for s in _TRAINERS.values() if s.name != spec.name for o in s.options}
    for o in spec.options:
        if o.key in _BASE_KEYS:
            raise ValueError(f"trainer {spec.name!r}: option {o.key!r} is a base config key")
        if o.key in owned and owned[o.key].default != o.default:
            raise ValueError(f"trainer {spec.name!r}: option {o.key!r} is registered by another "
                             f"trainer with default {owned[o.key].default!r}")
    _TRAINERS[spec.name] = spec
    return spec


def unregister_trainer(name: str) -> None:
    _TRAINERS.pop(name, None)


def trainer_names() -> List[str]:
    return list(_TRAINERS)


def get_trainer_spec(name: str) -> TrainerSpec:
    if name not in _TRAINERS:
        raise ConfigError(f"config key 'trainer': {name!r} is not allowed; use one of {trainer_names()}")
    return _TRAINERS[name]


def trainer_options() -> Dict[str, Option]:
    """Every registered trainer's options by key (first registration wins for shared keys)."""
    out: Dict[str, Option] = {}
    for spec in _TRAINERS.values():
        for o in spec.options:
            out.setdefault(o.key, o)
    return out


def build_trainer(cfg: Dict[str, Any], net, context):
    """The trainer named by ``cfg["trainer"]``, after its own checks."""
    spec = get_trainer_spec(cfg["trainer"])
    if spec.check is not None:
        spec.check(cfg, net, context)
    return spec.build(cfg, net, context)
