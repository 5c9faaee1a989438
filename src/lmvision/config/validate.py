"""Check a composed config against the classes it names, before anything is built.

Every node with a ``_target_`` is compared with the signature of its target: an option the
target does not take, or a value of the wrong type for an annotated argument (``1.5`` for an
``int``, ``"abc"`` for a ``float``, a value outside a ``Literal``), is refused with one
:class:`UserError` naming the option the user wrote. A value that comes by interpolation is
named by its source: ``seed=foo`` is reported as ``seed``, not as
``data.datamodule.split_seed``.
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import types
import typing
from typing import Any, Literal, Union

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from lmvision.errors import UserError, user_error_in

SEQUENCES = (list, tuple, collections.abc.Sequence)
INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


def check_config(cfg: DictConfig) -> None:
    """Raise one UserError for the first option that cannot be right (see the module doc)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)  # Hydra's own node (present when composed with the compose API)
    raw = OmegaConf.to_container(cfg, resolve=False)
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        user = user_error_in(err)
        if user is not None:
            raise user
        key = getattr(err, "full_key", None) or "the config"
        first = str(err).splitlines()[0]
        raise UserError(f"{key}: {first}") from err
    for key in resolved:
        _walk(resolved[key], raw[key], key, raw)


def _walk(value: Any, raw: Any, path: str, root: dict) -> None:
    seen = set()
    while isinstance(raw, str) and (found := INTERPOLATION.match(raw)) and path not in seen:
        seen.add(path)  # a whole section taken from elsewhere (${optimizer}): name that place
        path, raw = found.group(1), _raw_at(root, found.group(1))
    if isinstance(value, dict):
        if "_target_" in value:
            _check_target(value, raw, path, root)
        for key, child in value.items():
            if not str(key).startswith("_"):
                _walk(child, raw.get(key) if isinstance(raw, dict) else None, f"{path}.{key}", root)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            _walk(child, raw[i] if isinstance(raw, list) and i < len(raw) else None,
                  f"{path}[{i}]", root)


def _check_target(node: dict, raw: dict, path: str, root: dict) -> None:
    from hydra.utils import get_object

    try:
        target = get_object(node["_target_"])
    except ImportError as err:  # a _target_ that names nothing (a bug inside a module is no such)
        raise UserError(f"{path}._target_={node['_target_']!r}: cannot import it ({err})") from err
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return
    params = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    hints = _hints(target)
    for key, value in node.items():
        if str(key).startswith("_"):
            continue
        name = _source(raw, key, f"{path}.{key}", root)
        if key not in params:
            if takes_any:
                continue
            options = [p for p, v in params.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
            raise UserError(f"{name}: no such option of {node['_target_']}; it takes "
                            f"{', '.join(options) or 'no options'}")
        if key in hints and not isinstance(value, dict) and not fits(value, hints[key]):
            raise UserError(f"{name}={value!r}: expected {describe(hints[key])}")


def _hints(target: Any) -> dict[str, Any]:
    function = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no type check for this target
        return {}


def _source(raw: Any, key: str, path: str, root: dict) -> str:
    """The option the user set for ``path``: follow plain ``${a.b}`` interpolations to ``a.b``."""
    seen = set()
    value = raw.get(key) if isinstance(raw, dict) else None
    while isinstance(value, str) and (found := INTERPOLATION.match(value)) and path not in seen:
        seen.add(path)
        path = found.group(1)
        value = _raw_at(root, path)
    return path


def source_of(cfg: DictConfig, path: str) -> str:
    """The option the user set for the config key ``path``, following plain ``${a.b}``
    interpolations, of the key or of a section on its way: ``data.datamodule.batch_size`` is
    ``data.batch_size`` when it holds ``${data.batch_size}``, and
    ``inputs.text.encoder.pooling`` is ``text_encoder.pooling`` when ``inputs.text.encoder``
    holds ``${text_encoder.encoder}``, whose ``pooling`` holds ``${text_encoder.pooling}``."""
    root = OmegaConf.to_container(cfg, resolve=False)
    where: list[str] = []
    for part in path.split("."):
        where.append(part)
        seen = set()
        value = _raw_at(root, ".".join(where))
        while isinstance(value, str) and (found := INTERPOLATION.match(value)):
            if found.group(1) in seen:
                break
            seen.add(found.group(1))
            where = found.group(1).split(".")
            value = _raw_at(root, found.group(1))
    return ".".join(where)


def _raw_at(root: dict, path: str) -> Any:
    node: Any = root
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (plain Python, from a resolved config) can be given as ``hint``."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(fits(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in SEQUENCES or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    return True  # anything richer (callables, modules, paths...) is left to the target


def describe(hint: Any) -> str:
    """``int | None`` -> 'a whole number or null'."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(h) for h in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
             type(None): "null"}
    if hint in names:
        return names[hint]
    return "a list" if origin in SEQUENCES else getattr(hint, "__name__", str(hint))
