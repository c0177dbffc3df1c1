"""Policies by name. Adding a policy = one new module + one `register` line in policies/__init__.py."""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from ..strictnum import bad_number, is_numeric

_POLICIES: dict[str, tuple[type[BaseModel], Callable[..., Any]]] = {}


def register(name: str, params: type[BaseModel], factory: Callable[..., Any]) -> None:
    if name in _POLICIES:
        raise ValueError(f"policy {name!r} registered twice")
    _POLICIES[name] = (params, factory)


def names() -> list[str]:
    return sorted(_POLICIES)


def _lookup(name: str) -> tuple[type[BaseModel], Callable[..., Any]]:
    try:
        return _POLICIES[name]
    except KeyError:
        raise ValueError(f"policy.name: unknown policy {name!r}; valid policies: {', '.join(names())}") from None


def validate_params(name: str, params: dict, scenario: Any) -> BaseModel:
    """Validate a policy's params against its schema (and against the scenario, if it checks)."""
    schema, _ = _lookup(name)
    for key, value in params.items():  # lax pydantic reads true as 1 and accepts inf
        field = schema.model_fields.get(key) if isinstance(key, str) else None
        why = bad_number(value) if field is not None and is_numeric(field.annotation) else None
        if why:
            raise ValueError(f"policy.params.{key}: {why}")
    try:
        parsed = schema.model_validate(params)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = f"unknown parameter; {name} takes: {', '.join(schema.model_fields)}"
        raise ValueError(f"policy.params.{loc}: {msg}") from None
    check = getattr(parsed, "check_scenario", None)
    if check is not None:
        check(scenario)
    return parsed


def create(name: str, params: dict, scenario: Any) -> Any:
    _, factory = _lookup(name)
    return factory(validate_params(name, params, scenario))
