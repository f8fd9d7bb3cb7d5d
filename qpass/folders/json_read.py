"""JSON from a stranger's folder: size-capped, depth-limited, checked against a schema before
any field is used, so a manifest that is an array, a field of the wrong type or a document
nested 100,000 deep is one UnsafeFileError naming the file and the field, never an
AttributeError or RecursionError somewhere later.

A schema is plain data:
  a type or tuple of types   isinstance (bool is not an int unless bool is listed)
  a tuple of specs           any one of them
  [spec]                     a list whose every item matches spec
  Mapping(spec)              an object with string keys, every value matching spec
  {"key": spec, ...}         an object holding at least these keys (Optional(spec): may be
                             absent); other keys are allowed and unchecked
  object                     anything"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from qpass.errors import UnsafeFileError

from .regular import read_text

MAX_DEPTH = 64          # deeper than any file qpass or transformers writes


@dataclass(frozen=True)
class Optional:
    spec: Any


@dataclass(frozen=True)
class Mapping:
    spec: Any


def _depth_ok(value, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:                          # iterative: the check itself cannot overflow
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > limit:
                return False
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


def parse_json(text: str, where: str, schema: Any = object, max_depth: int = MAX_DEPTH):
    """The value of JSON `text` after the depth and schema checks; `where` names it in errors."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise UnsafeFileError(f"{where} is JSON nested too deeply to be real") from None
    except ValueError as e:
        msg = f"{e.msg} at line {e.lineno} column {e.colno}" if hasattr(e, "msg") else str(e)
        raise UnsafeFileError(f"{where} is not valid JSON: {msg}") from None
    if not _depth_ok(value, max_depth):
        raise UnsafeFileError(f"{where} is JSON nested deeper than {max_depth} levels; no file "
                              f"qpass reads is")
    check_shape(value, schema, where)
    return value


def read_json(path, folder, cap: int, schema: Any = object, what: str = "file",
              max_depth: int = MAX_DEPTH):
    """parse_json of a regular, size-capped file inside `folder`."""
    return parse_json(read_text(path, folder, cap, what), str(path), schema, max_depth)


def _type_name(spec) -> str:
    if isinstance(spec, tuple):
        return " or ".join(_type_name(s) for s in spec)
    if isinstance(spec, list):
        return "a list"
    if isinstance(spec, (dict, Mapping)):
        return "an object"
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false",
            type(None): "null", dict: "an object", list: "a list"}.get(spec, spec.__name__)


def _is(value, types) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types and object not in types:
        return False
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return True                      # JSON does not tell 1 from 1.0
    return isinstance(value, types)


def check_shape(value, schema, where: str) -> None:
    """UnsafeFileError naming the first field of `value` that does not match `schema`."""
    stack = [(value, schema, where)]
    while stack:
        v, s, at = stack.pop()
        if s is object:
            continue
        if isinstance(s, Optional):
            s = s.spec
        if isinstance(s, tuple) and not all(isinstance(x, type) for x in s):
            if not any(_matches(v, alt, at) for alt in s):      # alternatives of any spec
                raise _wrong(at, s, v)
            continue
        if isinstance(s, list):
            if not isinstance(v, list):
                raise _wrong(at, s, v)
            stack.extend((x, s[0], f"{at}[{i}]") for i, x in enumerate(v))
        elif isinstance(s, Mapping):
            if not isinstance(v, dict):
                raise _wrong(at, s, v)
            stack.extend((x, s.spec, _field(at, k)) for k, x in v.items())
        elif isinstance(s, dict):
            if not isinstance(v, dict):
                raise _wrong(at, s, v)
            for key, sub in s.items():
                if key not in v:
                    if not isinstance(sub, Optional):
                        raise UnsafeFileError(f"{at} lacks the field {key!r}")
                    continue
                stack.append((v[key], sub, f"{at}.{key}"))
        elif not _is(v, s):
            raise _wrong(at, s, v)


def _field(at: str, key: str) -> str:
    """`at.key`, or `at['key']` for a key that is not a plain name (it comes from the file:
    quoted, it cannot break the one-line message)."""
    plain = key.replace("_", "a").replace("-", "a").replace(".", "a").isalnum() and len(key) < 80
    return f"{at}.{key}" if plain else f"{at}[{key[:80]!r}]"


def _matches(value, spec, at: str) -> bool:
    try:
        check_shape(value, spec, at)
        return True
    except UnsafeFileError:
        return False


def _wrong(at: str, spec, value) -> UnsafeFileError:
    got = type(value).__name__ if not isinstance(value, (dict, list)) else \
        ("an object" if isinstance(value, dict) else "a list")
    return UnsafeFileError(f"{at} must be {_type_name(spec)}, not {got}")
