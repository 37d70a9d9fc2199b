"""Megatron-named argparse flags generated from config dataclasses (no hand-kept second list).

Every dataclass field becomes ``--field-name`` unless its metadata names another flag. Booleans that default
to False become ``store_true`` flags; booleans that default to True get a ``--no-field-name`` switch.
"""
import argparse
import dataclasses
import typing
from dataclasses import MISSING, field, fields


def option(default, help: str, flag: str | None = None, choices=None, **kwargs):
    """A config field with its --help text and (optionally) an explicit Megatron flag name."""
    meta = {"help": help, "flag": flag, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kwargs)
    return field(default=default, metadata=meta, **kwargs)


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(tp):
    """int | None -> int; list[str] -> (list, str)."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (list, tuple):
        return list, (args[0] if args else str)
    if args and origin is not None:  # Optional / Union
        return _base_type(args[0])
    return tp, None


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, title: str | None = None, skip=()) -> None:
    """One group of flags from ``cls``'s fields, those named in ``skip`` left out (an inherited field whose flag
    another group adds)."""
    group = parser.add_argument_group(title or cls.__name__)
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if not f.init or f.metadata.get("cli") is False or f.name in skip:
            continue
        tp, item = _base_type(hints[f.name])
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        name = flag_name(f)
        help_text = f.metadata.get("help", "")
        if tp is bool:
            if default:
                group.add_argument("--no-" + name[2:], dest=f.name, action="store_false", default=None,
                                   help=help_text + " (on by default; this switch turns it off)")
            else:
                group.add_argument(name, dest=f.name, action="store_true", default=None, help=help_text)
            continue
        kwargs = dict(dest=f.name, default=None, help=f"{help_text} (default: {default})")
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if tp is list:
            kwargs.update(nargs="+", type=item)
        else:
            kwargs["type"] = tp
        group.add_argument(name, **kwargs)


def apply_flags(instance, namespace: argparse.Namespace):
    """Return a copy of ``instance`` with every flag the user actually gave (not None) applied."""
    changes = {f.name: getattr(namespace, f.name) for f in fields(instance)
               if f.init and getattr(namespace, f.name, None) is not None}
    return dataclasses.replace(instance, **changes)
