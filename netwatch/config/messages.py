"""pydantic's validation errors as problems: the line of each key, a message an engineer can
act on ("'192.0.2.300' is not an IP address"), a "did you mean" hint for unknown keys. Pure.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError

from netwatch.config.errors import Loc, Problem, dotted
from netwatch.config.yamldoc import Document


def _unwrap(annotation: Any) -> list[Any]:
    """The model classes an annotation may hold (through Optional, list, Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (list, tuple, typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _unwrap(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        candidates = _unwrap(field.annotation) if field else []
        model = candidates[0] if candidates else None
    return model


def _message(error: dict, root: type[BaseModel]) -> str:
    kind, value = error["type"], error.get("input")
    loc = tuple(error["loc"])
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        known = list(model.model_fields) if model else []
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        suffix = f" (did you mean '{hint[0]}'?)" if hint else f" (known keys: {', '.join(known)})"
        return f"unknown key{suffix}"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind == "literal_error":
        return f"{value!r} is not one of: {error['ctx']['expected']}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{value!r} is not a whole number"
    if kind in ("float_parsing", "float_type"):
        return f"{value!r} is not a number"
    if kind in ("bool_parsing", "bool_type"):
        return f"{value!r} is not true or false"
    if kind in ("string_type",):
        return f"{value!r} is not a string"
    if kind in ("list_type",):
        return f"expected a list, got {value!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {value!r}"
    if kind == "finite_number":
        return f"{value!r} is not a finite number"
    if kind.startswith(("greater_than", "less_than")):
        return f"{value!r}: {error['msg'].lower()}"
    if kind == "too_short":
        return "must not be empty"
    return f"{error['msg']} (got {value!r})"


def problems_from(exc: ValidationError, doc: Document, root: type[BaseModel]) -> list[Problem]:
    errors = exc.errors(include_url=False)
    # A misspelt required key shows up twice: as unknown, and its right spelling as missing.
    # The unknown-key line already says "did you mean", so the missing line is dropped.
    hinted = set()
    for error in errors:
        if error["type"] == "extra_forbidden":
            loc = tuple(error["loc"])
            model = _model_at(root, loc[:-1])
            known = list(model.model_fields) if model else []
            for match in difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6):
                hinted.add((*loc[:-1], match))
    problems = []
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "missing" and loc in hinted:
            continue
        problems.append(Problem(doc.file, doc.line(loc), dotted(loc), _message(error, root)))
    return problems


