"""Run configuration: defaults, YAML loading, validation.

A config is a flat mapping of the keys in :data:`DEFAULTS` (the README lists them): the loop's
own keys (:data:`BASE_DEFAULTS`) and the keys each registered trainer owns
(:mod:`spikelfp.train.registry`). Values come from the defaults, then a YAML file
(``--config``), then command-line flags (flags win). Unknown keys and out-of-range values are
rejected with one line naming the key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

import yaml

from .errors import ConfigError
from .registry import Option, get_trainer_spec, set_base_keys, trainer_names, trainer_options

BASE_DEFAULTS: Dict[str, Any] = {
    # data
    "dataset": "digits", "data_root": None, "download": False, "limit": None, "test_limit": None,
    "val_fraction": 0.1, "encoder": "constant", "steps": 25, "num_workers": 0,
    # event data (tonic): time binning and preprocessing
    "event_window_us": None, "event_denoise_us": None, "event_first_saccade": False,
    "event_merge_polarity": False, "event_downsample": 1, "event_binary": False, "cache_dir": None,
    # model
    "model": "mlp", "hidden": [128], "channels": [16, 32], "pool_input": 1, "bias": True,
    "beta": 0.9, "threshold": 1.0, "reset": "subtract",
    "neuron": "lif", "alpha": 0.0, "recurrent": False,
    # trainer (its own keys come from the registry)
    "trainer": "lfp",
    # optimization
    "optimizer": "adam", "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0, "grad_clip": None,
    "schedule": None, "step_size": 5, "gamma": 0.5,
    "epochs": 20, "batch_size": 32, "seed": 0,
    # run
    "device": "auto", "dtype": "float32", "out": "runs", "run_name": None, "progress": "auto",
    "log_updates_every": 50, "save_every": 0,
}
set_base_keys(BASE_DEFAULTS)


class _Defaults(Mapping):
    """The base defaults plus every registered trainer's options (read live, so a trainer
    registered later is included)."""

    def _merged(self) -> Dict[str, Any]:
        out = dict(BASE_DEFAULTS)
        out.update({k: o.default for k, o in trainer_options().items()})
        return out

    def __getitem__(self, key: str) -> Any:
        return self._merged()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._merged())

    def __len__(self) -> int:
        return len(self._merged())


DEFAULTS: Mapping[str, Any] = _Defaults()

CHOICES = {
    "encoder": ("constant", "poisson", "latency", "delta"),
    "model": ("mlp", "lenet", "convnet"),
    "reset": ("subtract", "zero"),
    "neuron": ("lif", "cuba"),
    "optimizer": ("sgd", "adam", "adamw"),
    "schedule": (None, "none", "cosine", "step", "onecycle"),
    "device": ("auto", "cpu", "cuda"),
    "dtype": ("float32", "float64"),
    "progress": ("auto", "on", "off"),
}

_POSITIVE_INT = ("steps", "epochs", "batch_size", "step_size", "event_downsample", "pool_input")
_NONNEG_INT = ("num_workers", "log_updates_every", "save_every")
_OPT_POSITIVE_INT = ("limit", "test_limit")
_POSITIVE_FLOAT = ("lr", "threshold")
_NONNEG_FLOAT = ("weight_decay", "momentum")
_OPT_POSITIVE_FLOAT = ("event_window_us", "event_denoise_us", "grad_clip")
# (keys, type, may be null, lowest value, lowest excluded)
_NUMERIC = (
    (_POSITIVE_INT, int, False, 1, False), (_NONNEG_INT, int, False, 0, False),
    (_OPT_POSITIVE_INT, int, True, 1, False), (_POSITIVE_FLOAT, float, False, 0.0, True),
    (_NONNEG_FLOAT, float, False, 0.0, False), (_OPT_POSITIVE_FLOAT, float, True, 0.0, True),
)
_BOOL = ("download", "bias", "event_first_saccade", "event_merge_polarity", "event_binary", "recurrent")


def _num(key, v, kind):
    return Option(key, None, "", kind=kind).validate(v)


def _base_options():
    """The loop's numeric, boolean and choice keys as :class:`Option` (one validator for all)."""
    for keys, kind, optional, lowest, strict in _NUMERIC:
        for k in keys:
            yield Option(k, BASE_DEFAULTS[k], "", kind=kind, minimum=lowest, strict=strict, nullable=optional)
    for k in _BOOL:
        yield Option(k, BASE_DEFAULTS[k], "", kind=bool)
    for k, choices in CHOICES.items():
        yield Option(k, BASE_DEFAULTS[k], "", choices=choices)
    yield Option("gamma", BASE_DEFAULTS["gamma"], "", kind=float, minimum=0.0, strict=True, maximum=1.0)
    yield Option("seed", BASE_DEFAULTS["seed"], "", kind=int, minimum=0, maximum=2 ** 63 - 1)
    for k in ("dataset", "out"):
        yield Option(k, BASE_DEFAULTS[k], "", kind=str)
    for k in ("data_root", "run_name", "cache_dir"):
        yield Option(k, BASE_DEFAULTS[k], "", kind=str, nullable=True)


_BASE_OPTIONS = tuple(_base_options())


def validate(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Check every key and value; returns a normalized copy."""
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; allowed keys: {sorted(DEFAULTS)}")
    out = dict(cfg)
    if out["trainer"] not in trainer_names():
        raise ConfigError(f"config key 'trainer': {out['trainer']!r} is not allowed; "
                          f"use one of {trainer_names()}")
    for opt in (*_BASE_OPTIONS, *trainer_options().values()):
        out[opt.key] = opt.validate(out[opt.key])
    out["beta"] = _num("beta", out["beta"], float)
    if not 0 < out["beta"] <= 1:
        raise ConfigError(f"config key 'beta': {out['beta']} is out of range; beta must lie in (0, 1]")
    vf = _num("val_fraction", out["val_fraction"], float)
    if not 0 <= vf < 1:
        raise ConfigError(f"config key 'val_fraction': {vf} is out of range; use 0 <= val_fraction < 1")
    out["val_fraction"] = vf
    if out["schedule"] == "none":
        out["schedule"] = None
    for k in ("hidden", "channels"):
        v = out[k]
        if isinstance(v, int):
            v = [v]
        if not isinstance(v, (list, tuple)) or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in v):
            raise ConfigError(f"config key {k!r}: {v!r} must be a list of positive integers")
        out[k] = list(v)
    _check_neuron(out)
    return out


def _check_neuron(out: Dict[str, Any]) -> None:
    """``alpha`` in [0, 1) and only with ``neuron: cuba``; ``recurrent`` needs hidden dense layers."""
    out["alpha"] = _num("alpha", out["alpha"], float)
    if not 0 <= out["alpha"] < 1:
        raise ConfigError(f"config key 'alpha': {out['alpha']} is out of range; alpha must lie in [0, 1)")
    if out["alpha"] != 0 and out["neuron"] != "cuba":
        raise ConfigError(f"config key 'alpha': {out['alpha']} needs neuron: cuba (neuron is {out['neuron']!r})")
    if out["recurrent"] and (out["model"] == "lenet" or not out["hidden"]):
        raise ConfigError("config key 'recurrent': true needs hidden dense layers (model mlp or convnet "
                          "with a non-empty 'hidden')")


def load_yaml(path) -> Dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys to values")
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"config file {str(p)!r}: unknown key(s) {unknown}; allowed keys: {sorted(DEFAULTS)}")
    return data


def resolve(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Defaults <- the trainer's preferred base defaults <- YAML file <- overrides (``None``
    values in overrides are ignored)."""
    cfg = copy.deepcopy(dict(DEFAULTS))
    given = set()
    if path:
        data = load_yaml(path)
        cfg.update(data)
        given |= set(data)
    for k, v in (overrides or {}).items():
        if v is not None:
            cfg[k] = v
            given.add(k)
    if cfg.get("trainer") in trainer_names():
        for k, v in get_trainer_spec(cfg["trainer"]).defaults.items():
            if k not in given:
                cfg[k] = copy.deepcopy(v)
    return validate(cfg)


def model_spec(cfg: Dict[str, Any], input_shape, num_classes: int) -> Dict[str, Any]:
    """The part of the config that rebuilds the network (stored in checkpoints)."""
    keys = ("model", "hidden", "channels", "pool_input", "bias", "beta", "threshold", "reset", "neuron",
            "alpha", "recurrent")
    spec = {k: cfg[k] for k in keys}
    spec.update(input_shape=list(input_shape), num_classes=int(num_classes))
    return spec
