"""Base class for every spec: strict, frozen, unknown keys refused.

Specs are validated once, at the boundary where YAML or the UI is read, and then passed
around as immutable values. ``extra="forbid"`` turns a typo in YAML into an error that names
the misspelled key instead of a silently ignored setting. Numbers are finite everywhere
(``allow_inf_nan=False``: ``.inf`` and ``.nan`` are refused), and a boolean is never a number:
YAML 1.1 reads ``yes``, ``no``, ``on`` and ``off`` as booleans, and pydantic would otherwise take
``hc_mult: yes`` as 1.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError


def _takes_bool(tp: Any) -> bool:
    """Whether a bare boolean is a legitimate value of annotation ``tp``."""
    origin = get_origin(tp)
    if tp is bool or tp is Any:
        return True
    if origin is Annotated:
        return _takes_bool(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return any(_takes_bool(a) for a in get_args(tp))
    if origin is Literal:  # only a literal of numbers wants a number
        return not any(isinstance(a, (int, float)) and not isinstance(a, bool) for a in get_args(tp))
    return tp not in (int, float)  # str, models, containers: pydantic refuses a bool itself


def _booleans(tp: Any, value: Any, loc: tuple) -> list[tuple]:
    """Locations inside ``value`` that hold a boolean where ``tp`` wants a number."""
    if isinstance(value, bool):
        return [] if _takes_bool(tp) else [loc]
    origin = get_origin(tp)
    if origin is Annotated:
        return _booleans(get_args(tp)[0], value, loc)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        found = [_booleans(a, value, loc) for a in members]
        return found[0] if found and all(found) else []
    args = get_args(tp)
    if isinstance(value, (list, tuple)) and origin in (list, tuple) and args:
        if origin is tuple and args[-1] is not Ellipsis:
            return [x for i, (a, v) in enumerate(zip(args, value)) for x in _booleans(a, v, loc + (i,))]
        return [x for i, v in enumerate(value) for x in _booleans(args[0], v, loc + (i,))]
    if isinstance(value, dict) and origin is dict and len(args) == 2:
        return [x for k, v in value.items() for x in _booleans(args[1], v, loc + (k,))]
    return []


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_as_number(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        errors = []
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(key, str) else None
            if field is None:
                continue
            for loc in _booleans(field.annotation, value, (key,)):
                errors.append(InitErrorDetails(type=_BOOL_AS_NUMBER, loc=loc, input=_at(value, loc[1:])))
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data

    def to_yaml_dict(self) -> dict:
        """A plain dict with units written as strings where exact; loads back to an equal spec."""
        return self.model_dump(mode="json", exclude_none=True)


_BOOL_AS_NUMBER = PydanticCustomError(
    "bool_as_number", "expected a number, got a boolean (YAML reads yes/no/on/off/true/false as booleans)")


def _at(value: Any, loc: tuple) -> Any:
    for part in loc:
        value = value[part]
    return value
