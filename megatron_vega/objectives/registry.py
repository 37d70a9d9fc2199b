"""Objectives by name: ``--objective`` offers what is registered here. The built-in objectives register
themselves when ``megatron_vega.objectives`` is imported; another module registers its own the same way before
the parser is built (tests/objectives/toy_objective.py)."""
from megatron_vega.errors import VegaInputError

_OBJECTIVES: dict[str, type] = {}


def register_objective(name: str, cls: type) -> None:
    if name in _OBJECTIVES and _OBJECTIVES[name] is not cls:
        raise ValueError(f"objective {name!r} is already registered ({_OBJECTIVES[name].__qualname__})")
    _OBJECTIVES[name] = cls


def choices() -> list[str]:
    return list(_OBJECTIVES)


def objective_class(name: str) -> type:
    if name not in _OBJECTIVES:
        raise VegaInputError("--objective", f"unknown objective {name!r} (registered: {', '.join(_OBJECTIVES)})")
    return _OBJECTIVES[name]


def registered() -> dict[str, type]:
    return dict(_OBJECTIVES)
