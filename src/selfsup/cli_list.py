"""``selfsup list methods | backbones | presets | datasets | recipes``, and ``selfsup list
methods NAME`` with every hyper-parameter of one method (its ``Config`` field, default and the
comment in the source, which cites the paper).

Each kind imports only the module that registers it (listing datasets does not import timm).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import re
from typing import Any

from selfsup import registry

__all__ = ["add_list_args", "cmd_list", "emit", "method_params"]

# the module whose import registers each kind's built-ins
PROVIDERS = {"method": "selfsup.methods", "backbone": "selfsup.nn.backbones",
             "preset": "selfsup.data.views", "dataset": "selfsup.data.datasets"}
_FIELD = re.compile(r"^\s+(\w+)\s*:[^=#]*(?:=[^#]*)?(?:#\s?(.*))?$")
_COMMENT = re.compile(r"^\s+#\s?(.*)$")


def emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    """``--json``: one JSON object on stdout; else the text."""
    print(json.dumps(obj) if args.json else text, flush=True)


def add_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["methods", "backbones", "presets", "datasets", "recipes"])
    p.add_argument("name", nargs="?", help="methods: show this method's hyper-parameters")
    p.add_argument("--all", nargs="?", const="", default=None, metavar="PATTERN",
                   help="backbones: also every timm:NAME and torchvision:NAME model (only names "
                   "containing PATTERN when given; wildcards * ? allowed)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _field_comments(cls: type) -> dict[str, str]:
    """The comments of the fields defined in ``cls``'s own source."""
    items: list[tuple[str, str, str]] = []  # ("field", name, inline) | ("comment", "", text)
    for line in inspect.getsource(cls).splitlines()[1:]:
        c = _COMMENT.match(line)
        m = None if c or line.strip().startswith(('"', "def ", "@")) else _FIELD.match(line)
        if c:
            items.append(("comment", "", c.group(1).strip()))
        elif m:
            items.append(("field", m.group(1), (m.group(2) or "").strip()))
        else:
            items.append(("other", "", ""))
    comments: dict[str, str] = {}
    i, block, prev = 0, "", None
    while i < len(items):
        kind, name, text = items[i]
        if kind == "comment":
            j = i
            while j < len(items) and items[j][0] == "comment":
                j += 1
            lines = " ".join(t for _, _, t in items[i:j])
            nxt = items[j] if j < len(items) else ("other", "", "")
            if nxt[0] == "field" and not nxt[2]:
                block = lines  # the next field's own comment
            elif prev is not None:
                comments[prev] += " " + lines  # continues the previous field's comment
            i = j
            continue
        if kind == "field":
            comments[name] = text or block
            if text:
                block = ""
            prev = name
        else:
            prev, block = None, ""
        i += 1
    return comments


def method_params(name: str) -> list[dict[str, Any]]:
    """``[{"name", "type", "default", "comment"}]`` of method ``name``'s ``Config``, in order.

    Raises:
        UnknownNameError: for an unknown method (listing the valid ones).
    """
    importlib.import_module(PROVIDERS["method"])
    cls = registry.get("method", name).obj.Config
    # a field's comment: the one on its line, continued by the comment lines after it; a comment
    # block followed by a field without a comment of its own is that field's (and covers the
    # fields right after it that have none either: ``input_mean`` / ``input_std``)
    comments: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)
                           and isinstance(k, type)]):
        comments.update(_field_comments(klass))  # a subclass's own comments win
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append({"name": f.name, "type": str(f.type), "default": default,
                    "comment": comments.get(f.name, "")})
    return out


def _list_method(args: argparse.Namespace) -> int:
    rows = method_params(args.name)
    entry = registry.get("method", args.name)
    width = max((len(r["name"]) for r in rows), default=0)
    dwidth = max((len(repr(r["default"])) for r in rows), default=0)
    lines = [f"{entry.name}: {entry.description}", f"[{entry.reference}]" if entry.reference else
             "", "hyper-parameters (set with --set method_args.NAME=VALUE):"]
    lines += [f"  {r['name']:<{width}}  {r['default']!r:<{dwidth}}  {r['comment']}" for r in rows]
    emit(args, {"method": entry.name, "reference": entry.reference, "params": rows},
         "\n".join(line for line in lines if line))
    return 0


def _list_recipes(args: argparse.Namespace) -> int:
    from selfsup.config import SMALL_IMAGE_MAX
    from selfsup.engine.recipes import table

    rows = table()
    width = max(len(r["method"]) for r in rows)
    lines = [f"auto (default): small for images <= {SMALL_IMAGE_MAX} px where marked 'auto: "
             "small', else paper. Set with --recipe small|paper; values you set always win."]
    for r in rows:
        small = r["small"]
        if small is None:
            lines.append(f"{r['method']:<{width}}  paper only")
            continue
        o = small["optim"]
        lines.append(f"{r['method']:<{width}}  auto: {r['auto']:<5}  paper | small: "
                     f"{o.get('name')} lr {o.get('lr')} ({o.get('lr_scaling')}), "
                     f"wd {o.get('weight_decay')}; "
                     f"{', '.join(f'{k}={v}' for k, v in small['method_args'].items())}"
                     f"  [{r['small_source']}]")
    emit(args, {"recipes": rows}, "\n".join(lines))
    return 0


def _available(name: str) -> str:
    """'' if built-in dataset ``name`` can be opened here, else why not."""
    if name == "digits":
        return ""
    from selfsup.data.arrays import SHARED_ENV, shared_data_file
    from selfsup.types import DataError

    try:
        shared_data_file(name)
    except DataError:
        return f"not available here: set {SHARED_ENV}=/path/to/shared/data"
    return ""


def cmd_list(args: argparse.Namespace) -> int:
    from selfsup.types import ConfigError

    if args.name and args.what != "methods":
        raise ConfigError(f"selfsup list {args.what} takes no name (only `list methods NAME` "
                          "does)")
    if args.what == "recipes":
        return _list_recipes(args)
    if args.what == "methods" and args.name:
        return _list_method(args)
    kind = {"methods": "method", "backbones": "backbone", "presets": "preset",
            "datasets": "dataset"}[args.what]
    importlib.import_module(PROVIDERS[kind])  # registers that kind's built-ins only
    items: list[dict[str, Any]] = [
        {"name": e.name, "description": e.description, "reference": e.reference}
        for e in registry.entries(kind)]
    if kind == "dataset":
        for i in items:
            why = _available(i["name"])
            i["available"] = not why
            if why:
                i["description"] += f" ({why})"
    if kind == "backbone" and args.all is not None:
        from fnmatch import fnmatch

        from selfsup.nn.backbones.external import SOURCES, list_external

        pat = args.all if any(c in args.all for c in "*?[") else f"*{args.all}*"
        items = [i for i in items if fnmatch(i["name"], pat)]
        for source in SOURCES:
            items += [{"name": n, "description": f"{source} model, random init",
                       "reference": ""} for n in list_external(source, args.all)]
    width = max((len(i["name"]) for i in items), default=0)
    lines = [f"{i['name']:<{width}}  {i['description']}" +
             (f"  [{i['reference']}]" if i["reference"] else "") for i in items]
    if kind == "method":
        lines.append("(`selfsup list methods NAME` shows a method's hyper-parameters)")
    emit(args, {args.what: items}, "\n".join(lines))
    return 0
