"""Readable option types in `--help`, for the whole `sss` command tree.

Typer 0.29 labels every parameter in help with ``TyperOption.display_type_rich``, whose default is
the Python annotation in angle brackets: ``<str>``, ``<int>``, and ``<bool>`` even for flags (the
Rich help panel asks every option, flags included; ``--help`` too). Here flags get no label, an
option's own ``metavar=`` wins, and otherwise the label is the usual word: TEXT, INTEGER, FLOAT,
PATH, ``[a|b]`` for choices.

Typer builds its Click commands (and the ``--help`` option of each) afresh when the app runs, so
the label is decided when help is rendered: :func:`readable_help` wraps the root group class, and
the parameters of every command below a root of that class -- sub-typers added with ``add_typer``
included -- are labelled this way. Other Typer apps in the same process keep Typer's labels.
"""

from __future__ import annotations

import uuid
from pathlib import PurePath
from typing import Any, get_args, get_origin

from typer.core import TyperArgument, TyperGroup, TyperOption

_MARK = "_sss_readable_metavars"
_NAMES: dict[Any, str] = {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: "BOOLEAN", uuid.UUID: "UUID"}
_PATHS = {"file": "FILE", "dir": "DIRECTORY", "path": "PATH"}
_typer_display_type_rich: dict[type, Any] = {}


def _type_word(annotation: Any) -> str:
    if annotation in _NAMES:
        return _NAMES[annotation]
    if isinstance(annotation, type):
        if issubclass(annotation, PurePath):
            return "PATH"
        for base, word in _NAMES.items():
            if issubclass(annotation, base):
                return word
        return annotation.__name__.upper()
    return "VALUE"


def value_label(param: TyperOption | TyperArgument, ctx: Any) -> str:
    """The word for the value ``param`` takes: TEXT, INTEGER, PATH, [a|b], ... (metavar ignored)."""
    desc = param.type_descriptor
    annotation = desc.annotation
    if get_origin(annotation) is list and get_args(annotation):
        annotation = get_args(annotation)[0]  # repeatable: each occurrence takes one value
    if desc.is_choice:
        label = param.display_type(ctx)[1:-1]  # Typer's "<a|b>" / "<list[a|b]>", choices normalized
        if label.startswith("list[") and label.endswith("]"):
            label = label[5:-1]
        return f"[{label}]"
    if desc.is_tuple:
        return " ".join(_type_word(arg) for arg in get_args(annotation))
    if desc.is_datetime:
        formats = desc.parameter_info.formats
        return "[" + "|".join(formats) + "]" if formats else "DATETIME"
    if desc.is_path or desc.is_file:
        return _PATHS.get(desc.path_type, "PATH")
    return _type_word(annotation)


def _readable(ctx: Any) -> bool:
    return ctx is not None and getattr(ctx.find_root().command, _MARK, False)


def _display_type_rich(self: TyperOption | TyperArgument, ctx: Any) -> str | None:
    if not _readable(ctx):
        return _typer_display_type_rich[_base(self)](self, ctx)
    if isinstance(self, TyperOption) and (self.is_flag or self.count):
        return None  # a flag takes no value
    if isinstance(self, TyperOption) and self.metavar is not None:
        return self.metavar
    label = value_label(self, ctx)
    return label + "..." if self.nargs != 1 and not self.type_descriptor.is_tuple else label


def _base(param: Any) -> type:
    return TyperOption if isinstance(param, TyperOption) else TyperArgument


def _install() -> None:
    for cls in (TyperOption, TyperArgument):
        if cls not in _typer_display_type_rich:
            _typer_display_type_rich[cls] = cls.display_type_rich
            cls.display_type_rich = _display_type_rich


def readable_help(group_cls: type[TyperGroup]) -> type[TyperGroup]:
    """A subclass of ``group_cls`` to use as the root app's ``cls``: the help of the root and of
    every command and sub-group below it labels flags with nothing and values with a word."""
    _install()
    return type(group_cls.__name__, (group_cls,), {
        _MARK: True, "__doc__": group_cls.__doc__, "__module__": group_cls.__module__,
        "__qualname__": group_cls.__qualname__})
