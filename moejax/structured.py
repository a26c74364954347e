"""Typed, validated configs from the nested mappings config files give.

Config files are ml_collections ConfigDicts (see configs/); the code reads
frozen dataclasses, so each field has one type and one validation. This module
is the bridge: an unknown key is an error naming the key, where it is, and
the close matches among the known fields.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections


def unknown_key_error(key: str, known, where: str) -> ValueError:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return ValueError(f"unknown config field {where + key!r}{hint} Known fields of "
                      f"{where or 'the config'}: {', '.join(sorted(known))}")


def _freeze(value):
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def from_mapping(cls, mapping: Mapping[str, Any] | None, where: str = ""):
    """Builds dataclass `cls` from `mapping` (a dict or ConfigDict), recursing
    into fields whose type is itself a dataclass. Missing keys keep the
    dataclass defaults; lists become tuples so the result is hashable."""
    mapping = dict(mapping.to_dict() if hasattr(mapping, "to_dict") else (mapping or {}))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in mapping.items():
        if key not in fields:
            raise unknown_key_error(key, fields, where)
        field_type = hints[key]
        if dataclasses.is_dataclass(field_type) and not dataclasses.is_dataclass(value):
            value = from_mapping(field_type, value, f"{where}{key}.")
        kwargs[key] = _freeze(value)
    try:
        return cls(**kwargs)
    except ValueError as e:
        message = str(e)
        # 'k must be ...' reads as 'model.encoder_moe.router.k must be ...';
        # any other message gets the path as a prefix of its own.
        named = re.split(r"[\s=:\[]", message, maxsplit=1)[0] in fields
        prefix = where if named else (f"{where[:-1]}: " if where else f"{cls.__name__}: ")
        raise ValueError(f"{prefix}{message}") from None


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/file.py[:arg]` -> its get_config([arg]), as ml_collections'
    config_flags reads a --config file."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def config_dict(obj) -> ml_collections.ConfigDict:
    """A ConfigDict of dataclass `obj` for config files. Fields that are None
    become typed placeholders (from the type hints), so they can still be
    overridden from the command line (`--config.x.head_dim=64`)."""
    return ml_collections.ConfigDict(to_mapping(obj, placeholders=True))


def _placeholder(hint):
    types = [t for t in typing.get_args(hint) if t is not type(None)]
    field_type = types[0] if len(types) == 1 else object
    return ml_collections.config_dict.placeholder(typing.get_origin(field_type) or field_type)


def to_mapping(obj, placeholders: bool = False) -> dict[str, Any]:
    """The inverse of `from_mapping`: nested plain dicts (tuples as lists);
    with `placeholders`, None fields as typed ml_collections placeholders."""
    hints = typing.get_type_hints(type(obj)) if placeholders else {}
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = to_mapping(value, placeholders)
        elif isinstance(value, tuple):
            value = list(value)
        elif value is None and placeholders:
            value = _placeholder(hints[f.name])
        out[f.name] = value
    return out
