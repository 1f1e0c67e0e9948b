"""One way to declare settings: dataclass fields that carry their help, choices and range.

Every settings dataclass of the project (`prep.PrepConfig`, the training configs, generate's and
evaluate's settings) declares its fields with `setting`:

>>> @dataclass
... class Config(Settings):
...     sigma: float = setting(1.5, "Gaussian sigma, heatmap pixels", gt=0)
...     mode: str = setting("a", "what to do", choices=("a", "b"))

From that one declaration come:

- ``Config().validate()``: every value checked against its type, choices and range (NaN and
  infinity are refused for floats unless the field says ``finite=False``), raising `SettingError`
  that names the field and the bound. The CLIs and the Python APIs both call it, so a bad value
  fails before any work, whichever door it came in by;
- `add_arguments` / `from_args`: one ``--kebab-case`` option per field, with the help, the default
  and the choices in ``--help``;
- ``to_dict`` / ``from_dict``: the JSON form written beside outputs; unknown keys are refused.

This module is deliberately light (no torch, no numpy) because every CLI imports it to build its
parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, field

BOUNDS = {  # metadata key -> (test, words for the error)
    "ge": (lambda v, b: v >= b, ">="),
    "gt": (lambda v, b: v > b, ">"),
    "le": (lambda v, b: v <= b, "<="),
    "lt": (lambda v, b: v < b, "<"),
}


class SettingError(ValueError):
    """A setting outside its declared type, choices or range. The message names the field."""


class UsageError(ValueError):
    """The options given do not make one command (two sources where one is needed, an option that needs
    another): the command lines answer it like an argparse usage error, with exit code 2."""


def setting(
    default=MISSING,
    help: str = "",
    *,
    default_factory=MISSING,
    choices: tuple | Callable[[], tuple] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    finite: bool = True,
    cli: bool = True,
    **metadata,
):
    """A dataclass field with its help text, allowed values and range.

    `choices` may be a callable returning the names, so a registry that is expensive to import is
    asked only when the choices are needed. `ge`/`gt`/`le`/`lt` bound numbers (each element for
    tuples). `cli=False` keeps a structured field (a dict, say) out of the command line.
    """
    meta = {"help": help, "choices": choices, "finite": finite, "cli": cli, **metadata}
    meta.update({k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None})
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# The one name of precision across the commands: ``--precision {fp32,fp16,bf16}``.
PRECISIONS = ("fp32", "fp16", "bf16")
TORCH_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# The names precision had before, for a settings class's `Settings.RENAMED`.
OLD_PRECISION_NAMES = {
    "dtype": ("precision", {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}),
    "fp16": ("precision", {True: "fp16", False: "fp32"}),
    "mixed_precision": ("precision", {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}),
}


def precision_setting(help: str = "model precision (fp16 and bf16 on a GPU)"):
    """The ``precision`` field of a settings class: fp32, fp16 or bf16."""
    return setting("fp32", help, choices=PRECISIONS)


def torch_dtype(precision: str):
    """The torch dtype of a `PRECISIONS` name."""
    import torch

    if precision not in TORCH_DTYPE_NAMES:
        raise SettingError(
            f"precision (--precision) must be one of {', '.join(PRECISIONS)}; got {precision!r}"
        )
    return getattr(torch, TORCH_DTYPE_NAMES[precision])


def setting_like(cls, name: str, **changes):
    """A new field declared as `cls`'s field `name` (default, help, choices, range), with `changes`.

    A settings class that offers another's options (generate's blending options are `BlendConfig`'s)
    declares them this way, so each default and range is spelt once.
    """
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    meta = {**f.metadata, **changes}
    default = meta.pop("default", f.default)
    factory = f.default_factory if "default" not in changes else MISSING
    return setting(default, default_factory=factory, **meta)


def field_choices(f: dataclasses.Field) -> tuple | None:
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_type(tp):
    """(scalar type, optional, many) of an annotation: ``int | None`` -> (int, True, False)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    optional = False
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        if len(rest) != 1:
            return object, optional, False
        tp, origin, args = rest[0], typing.get_origin(rest[0]), typing.get_args(rest[0])
    if origin in (tuple, list):
        return (args[0] if args else object), optional, True
    return (origin or tp), optional, False


def _where(obj, name: str) -> str:
    """How an error names a field: with its CLI flag when the class is a command's settings."""
    return f"{name} ({flag(name)})" if getattr(type(obj), "CLI_FLAGS", True) else name


def _check_value(where: str, value, tp, f: dataclasses.Field) -> None:
    if tp is bool:
        if not isinstance(value, bool):
            raise SettingError(f"{where} must be true or false, got {value!r}")
        return
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingError(f"{where} must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingError(f"{where} must be a number, got {value!r}")
        if f.metadata.get("finite", True) and not math.isfinite(value):
            raise SettingError(f"{where} must be a finite number, got {value!r}")
    elif tp is str and not isinstance(value, str):
        raise SettingError(f"{where} must be a string, got {value!r}")
    choices = field_choices(f)
    if choices is not None and value not in choices:
        raise SettingError(f"{where} must be one of {', '.join(map(str, choices))}; got {value!r}")
    for key, (test, words) in BOUNDS.items():
        bound = f.metadata.get(key)
        if bound is not None and not test(value, bound):
            raise SettingError(f"{where} must be {words} {bound}, got {value!r}")


def check_fields(obj) -> None:
    """Check every field of dataclass `obj` against its declared type, choices and range."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        tp, optional, many = _scalar_type(hints[f.name])
        where = _where(obj, f.name)
        if value is None:
            if optional:
                continue
            if tp in (bool, int, float, str):
                raise SettingError(f"{where} must be set")
            continue
        if tp not in (bool, int, float, str):
            continue  # structured settings (dicts, nested configs) check themselves
        values = value if many else (value,)
        if many and not isinstance(value, (tuple, list)):
            raise SettingError(f"{where} must be a list, got {value!r}")
        for v in values:
            _check_value(where, v, tp, f)


class Settings:
    """Mixin of the settings dataclasses: ``validate``, ``to_dict`` and ``from_dict``.

    Subclasses with rules between fields override ``validate`` and call ``super().validate()`` first.
    Errors name the field and its ``--flag``; a class that is not a command's settings sets
    ``CLI_FLAGS = False`` to name the field alone.
    """

    CLI_FLAGS = True
    # Deprecated setting names: old name -> (new name, {old value: new value}). `from_dict` takes the
    # old key (a --config file, a sidecar, a run's config.json written before the rename) and
    # `add_arguments` the old option, which warns and names the new one.
    RENAMED: dict[str, tuple[str, dict]] = {}

    def validate(self):
        """Raise `SettingError` naming the first field outside its type, choices or range; returns self."""
        check_fields(self)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        if not isinstance(data, dict):
            raise SettingError(f"{cls.__name__}: settings must be a JSON object, got {type(data).__name__}")
        data = renamed_keys(cls, data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SettingError(f"unknown {cls.__name__} setting(s): {', '.join(unknown)}")
        return cls(**data)


def renamed_keys(cls, data: dict) -> dict:
    """`data` with `cls.RENAMED`'s old keys under their new names (a new key given too wins)."""
    renamed = getattr(cls, "RENAMED", {})
    if not any(old in data for old in renamed):
        return data
    data = dict(data)
    for old, (new, values) in renamed.items():
        if old in data:
            value = data.pop(old)
            data.setdefault(new, values.get(value, value) if isinstance(value, (str, bool)) else value)
    return data


# ---------------------------------------------------------------------------------------------------
# argparse


class _DeprecatedOption(argparse.Action):
    """An old option: stores its value under the new field, converted, and says which option to use."""

    def __init__(self, option_strings, dest, values_map, new_flag, value=None, **kwargs):
        self.values_map, self.new_flag, self.value = values_map, new_flag, value
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.values_map[self.value if self.nargs == 0 else values]
        print(
            f"{parser.prog}: warning: {option_string} is deprecated; use {self.new_flag} {value}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, value)


def add_renamed_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """The old options of `cls.RENAMED`, hidden from ``--help``: ``--fp16`` / ``--no-fp16`` for a bool,
    ``--dtype VALUE`` for a choice."""
    for old, (new, values) in getattr(cls, "RENAMED", {}).items():
        common = {"dest": new, "values_map": values, "new_flag": flag(new), "help": argparse.SUPPRESS}
        if set(values) <= {True, False}:
            for option, value in ((flag(old), True), ("--no-" + old.replace("_", "-"), False)):
                if value in values:
                    parser.add_argument(option, nargs=0, value=value, action=_DeprecatedOption, **common)
        else:
            parser.add_argument(flag(old), choices=tuple(values), action=_DeprecatedOption, **common)


def add_arguments(parser: argparse.ArgumentParser, cls, skip=(), title: str | None = None) -> None:
    """One ``--kebab-case`` option per CLI field of dataclass `cls`.

    The options' own defaults are None, so `from_args` can tell what was given; ``--help`` shows the
    field's default.
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title or f"{cls.__name__} settings")
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        bounds = ", ".join(f"{words} {f.metadata[k]}" for k, (_, words) in BOUNDS.items() if k in f.metadata)
        text = f.metadata.get("help", "")
        # A help text that explains its own default keeps it; the range is always shown.
        said = "default" in text.lower()
        extra = "; ".join(([] if said else [f"default: {default}"]) + ([bounds] if bounds else []))
        help_text = (f"{text} ({extra})" if extra else text).replace("%", "%%")
        tp, _, many = _scalar_type(hints[f.name])
        if tp is bool:
            group.add_argument(
                flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        choices = field_choices(f)
        group.add_argument(
            flag(f.name),
            dest=f.name,
            type=tp if tp in (int, float, str) else str,
            nargs="+" if many else None,
            default=None,
            choices=choices,
            metavar=None if choices else f.name.split("_")[-1].upper(),
            help=help_text,
        )
    add_renamed_arguments(parser, cls)


def given_options(cls, args: argparse.Namespace) -> dict:
    """The fields of `cls` that were given on the command line (lists become tuples)."""
    values = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return values


def read_settings_file(path: str, option: str = "--config") -> dict:
    """The settings a ``--config FILE`` gives: a JSON object of field names (a run's config.json, whose
    ``config`` holds them, and a generate sidecar, whose ``settings`` do, work too). Top-level keys that
    start with ``_`` are notes (``"_comment"``) and are dropped. `SettingError` naming the file otherwise."""
    from .storage import filesystem, read_json

    try:
        fs, local = filesystem(path)
        data = read_json(fs, local)
    except FileNotFoundError:
        raise SettingError(f"{option} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SettingError(f"{option} {path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise SettingError(f"{option} {path}: expected a JSON object of settings, got {type(data).__name__}")
    for key in ("config", "settings"):
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    return {k: v for k, v in data.items() if not k.startswith("_")}


def add_config_option(parser: argparse.ArgumentParser, cls) -> None:
    """``--config FILE``: a JSON file of `cls` settings (`read_settings_file`); options given override it."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"JSON file of {cls.__name__} settings (keys as the options, with underscores); "
        "options given on the command line override it",
    )


def from_args(cls, args: argparse.Namespace, base: dict | None = None):
    """Build the `Settings` class `cls` from `base` (e.g. a --config JSON), overridden by the options
    given on the command line."""
    return cls.from_dict({**(base or {}), **given_options(cls, args)})
