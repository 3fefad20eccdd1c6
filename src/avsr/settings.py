"""Rules for configuration values, stated where each setting is declared.

A dataclass field made with `setting(default, rule)` carries its rule, and `check_settings`
(called from the dataclass's `__post_init__`) tests every field. So a bad value is refused
when a config is built (from a recipe, overrides or a checkpoint's config.json), before any
long work, and the message names the setting: "lora_rank must be a positive integer, got 0";
the recipe reader adds the section ("model.lora_rank").
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, get_type_hints

from avsr.errors import AvsrError


class SettingError(ValueError):
    """A value its rule refuses; `key` is the field's name, so a caller can prefix its section."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key} {message}")
        self.key, self.message = key, message


class ConfigError(AvsrError):
    """An unknown key or a value of the wrong type in a mapping of settings (a recipe, overrides,
    a checkpoint's config.json): the message names where it came from and the dotted key."""


@dataclass(frozen=True)
class Rule:
    test: Callable[[Any], bool]
    what: str  # the message reads "<key> must be <what>, got <value>"


def setting(default: Any, rule: Rule) -> Any:
    """A dataclass field with its rule (a list or dict default is copied for each instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def check_settings(obj: Any) -> None:
    """Raise SettingError for the first field whose value its rule refuses."""
    for f in fields(obj):
        rule, value = f.metadata.get("rule"), getattr(obj, f.name)
        if rule is not None and not rule.test(value):
            raise SettingError(f.name, f"must be {rule.what}, got {value!r}")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float (bools, NaN and infinities are not numbers here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


POSITIVE_INT = Rule(lambda v: is_int(v) and v > 0, "a positive integer")
COUNT = Rule(lambda v: is_int(v) and v >= 0, "a non-negative integer")
POSITIVE = Rule(lambda v: is_number(v) and v > 0, "a positive number")
NON_NEGATIVE = Rule(lambda v: is_number(v) and v >= 0, "a non-negative number")
FRACTION = Rule(lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)")
FLAG = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
NAME = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
OPTIONAL_NAME = Rule(lambda v: v is None or NAME.test(v), "a non-empty string or null")


def one_of(*names: str) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v in names, "one of " + ", ".join(names))


def list_of(item: Rule, what: str, distinct: bool = False, empty: bool = False) -> Rule:
    """A list (or tuple) whose items all pass `item`."""
    def test(v: Any) -> bool:
        return (isinstance(v, (list, tuple)) and (empty or len(v) > 0) and all(item.test(x) for x in v)
                and (not distinct or len(set(v)) == len(v)))
    return Rule(test, what)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Turn YAML/JSON/CLI values into the field's type (tuples from lists, numbers from strings);
    the field's own rule then checks the value."""
    origin = getattr(hint, "__origin__", None)
    if hint is tuple or origin is tuple:
        return tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if hint in (int, float) and not isinstance(value, bool):
        try:  # YAML reads "5e-4" as a string
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise SettingError(key, f"must be a number, got {value!r}") from None
        if hint is int and not number.is_integer():
            raise SettingError(key, f"must be an integer, got {value!r}")
        return hint(number)
    if hint is bool and not isinstance(value, bool):
        raise SettingError(key, f"must be true or false, got {value!r}")
    return value


def from_mapping(cls, data: Any, where: str = "config", prefix: str = ""):
    """The one parser from a mapping (recipe, overrides, saved config) to a settings dataclass:
    `cls` from `data` over its defaults, nested dataclasses merged key by key, values coerced to
    the field types and checked by their rules. ConfigError messages start with `where` and name
    the dotted key (`prefix` + key)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the configuration'} must be a mapping of settings")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(prefix + str(k) for k in unknown)}; "
                          f"known: {sorted(names)}")
    base = cls()
    values = {}
    try:
        for k, v in data.items():
            if dataclasses.is_dataclass(hints[k]):
                if not isinstance(v, dict):
                    raise SettingError(k, f"must be a mapping of settings, got {v!r}")
                values[k] = from_mapping(hints[k], {**asdict(getattr(base, k)), **v}, where, prefix + k + ".")
            else:
                values[k] = _coerce(v, hints[k], k)
        return dataclasses.replace(base, **values)
    except ValueError as err:  # SettingError: a value its rule refuses
        raise ConfigError(f"{where}: {prefix}{err}") from None
