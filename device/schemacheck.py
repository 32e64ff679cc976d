"""A small JSON Schema (draft 2020-12) validator for the daemon's own closed schemas.

The daemon validates every verdict, session event, update status and fleet manifest, and needs only
the keywords those schemas use (below). jsonschema with its referencing and format stack costs the
daemon 5.7 MB RSS (docs/performance.md, "Memory"); this costs almost nothing. It reports errors as
jsonschema does (`absolute_path`, `validator` = the keyword broken, in the same order), and
tests/test_schemacheck.py checks it against jsonschema on the real schemas and thousands of mutated
instances. A schema with a keyword it does not know is refused when the validator is made, so a
schema edit cannot be silently ignored. Local `$ref`s (`#/$defs/...`) only.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

_ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description", "default", "examples", "$defs",
                "then", "else"}     # then/else are read by `if`


class SchemaError:
    """One broken rule: `absolute_path` (keys and indexes from the root), `validator` (the keyword)."""
    __slots__ = ("absolute_path", "validator")

    def __init__(self, path: tuple, keyword: str):
        self.absolute_path, self.validator = list(path), keyword

    def __repr__(self) -> str:
        return f"SchemaError({self.absolute_path!r}, {self.validator!r})"


def _is_type(x: Any, t: str) -> bool:
    if t == "object":
        return isinstance(x, dict)
    if t == "array":
        return isinstance(x, list)
    if t == "string":
        return isinstance(x, str)
    if t == "null":
        return x is None
    if t == "boolean":
        return isinstance(x, bool)
    if isinstance(x, bool):
        return False
    if t == "number":
        return isinstance(x, (int, float))
    if t == "integer":
        return isinstance(x, int) or (isinstance(x, float) and x.is_integer())
    raise ValueError(f"unknown JSON Schema type {t!r}")


def _unbool(x: Any) -> Any:
    return ("bool", x) if isinstance(x, bool) else x


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: True is not 1, recursively (jsonschema's rule)."""
    if a is b:
        return True
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return _unbool(a) == _unbool(b)


class Validator:
    def __init__(self, schema: dict):
        self.schema = schema
        self._re: dict[str, re.Pattern] = {}
        self._check(schema)

    def _check(self, s: Any) -> None:
        if isinstance(s, bool):
            return
        for k, v in s.items():
            if k not in _KEYWORDS and k not in _ANNOTATIONS:
                raise ValueError(f"schema keyword {k!r} not supported by device.schemacheck")
            if k == "pattern":
                self._re[v] = re.compile(v)
            elif k == "$ref" and not v.startswith("#/"):
                raise ValueError(f"only local $ref is supported, not {v!r}")
            elif k in ("properties", "$defs"):
                for sub in v.values():
                    self._check(sub)
            elif k in ("oneOf", "allOf"):
                for sub in v:
                    self._check(sub)
            elif k in ("items", "additionalProperties", "propertyNames", "if", "then", "else") and not isinstance(v, bool):
                self._check(v)

    def _ref(self, ref: str) -> Any:
        node: Any = self.schema
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def iter_errors(self, instance: Any) -> Iterator[SchemaError]:
        return self._errors(instance, self.schema, ())

    def is_valid(self, instance: Any) -> bool:
        return next(self.iter_errors(instance), None) is None

    def _valid(self, x: Any, s: Any) -> bool:
        return next(self._errors(x, s, ()), None) is None

    def _errors(self, x: Any, s: Any, path: tuple) -> Iterator[SchemaError]:
        if s is True:
            return
        if s is False:
            yield SchemaError(path, "False schema")
            return
        for k, v in s.items():
            f = _KEYWORDS.get(k)
            if f is not None:
                yield from f(self, x, v, s, path)


def _type(V, x, v, s, path):
    if not any(_is_type(x, t) for t in (v if isinstance(v, list) else [v])):
        yield SchemaError(path, "type")


def _enum(V, x, v, s, path):
    if not any(_equal(x, e) for e in v):
        yield SchemaError(path, "enum")


def _const(V, x, v, s, path):
    if not _equal(x, v):
        yield SchemaError(path, "const")


def _pattern(V, x, v, s, path):
    if isinstance(x, str) and not V._re[v].search(x):
        yield SchemaError(path, "pattern")


def _max_length(V, x, v, s, path):
    if isinstance(x, str) and len(x) > v:
        yield SchemaError(path, "maxLength")


def _minimum(V, x, v, s, path):
    if _is_type(x, "number") and x < v:
        yield SchemaError(path, "minimum")


def _maximum(V, x, v, s, path):
    if _is_type(x, "number") and x > v:
        yield SchemaError(path, "maximum")


def _required(V, x, v, s, path):
    if isinstance(x, dict):
        for name in v:
            if name not in x:
                yield SchemaError(path, "required")


def _properties(V, x, v, s, path):
    if isinstance(x, dict):
        for name, sub in v.items():
            if name in x:
                yield from V._errors(x[name], sub, path + (name,))


def _additional(V, x, v, s, path):
    if not isinstance(x, dict):
        return
    extras = [k for k in x if k not in s.get("properties", {})]
    if isinstance(v, dict):
        for k in extras:
            yield from V._errors(x[k], v, path + (k,))
    elif not v and extras:
        yield SchemaError(path, "additionalProperties")


def _max_properties(V, x, v, s, path):
    if isinstance(x, dict) and len(x) > v:
        yield SchemaError(path, "maxProperties")


def _property_names(V, x, v, s, path):
    if isinstance(x, dict):
        for k in x:
            yield from V._errors(k, v, path)


def _items(V, x, v, s, path):
    if isinstance(x, list):
        for i, item in enumerate(x):
            yield from V._errors(item, v, path + (i,))


def _min_items(V, x, v, s, path):
    if isinstance(x, list) and len(x) < v:
        yield SchemaError(path, "minItems")


def _max_items(V, x, v, s, path):
    if isinstance(x, list) and len(x) > v:
        yield SchemaError(path, "maxItems")


def _unique_items(V, x, v, s, path):
    if v and isinstance(x, list) and any(_equal(a, b) for i, a in enumerate(x) for b in x[i + 1:]):
        yield SchemaError(path, "uniqueItems")


def _one_of(V, x, v, s, path):
    n = sum(V._valid(x, sub) for sub in v)
    if n != 1:
        yield SchemaError(path, "oneOf")


def _all_of(V, x, v, s, path):
    for sub in v:
        yield from V._errors(x, sub, path)


def _if(V, x, v, s, path):
    if V._valid(x, v):
        if "then" in s:
            yield from V._errors(x, s["then"], path)
    elif "else" in s:
        yield from V._errors(x, s["else"], path)


def _ref(V, x, v, s, path):
    yield from V._errors(x, V._ref(v), path)


_KEYWORDS = {"type": _type, "enum": _enum, "const": _const, "pattern": _pattern, "maxLength": _max_length,
             "minimum": _minimum, "maximum": _maximum, "required": _required, "properties": _properties,
             "additionalProperties": _additional, "maxProperties": _max_properties,
             "propertyNames": _property_names, "items": _items, "minItems": _min_items, "maxItems": _max_items,
             "uniqueItems": _unique_items, "oneOf": _one_of, "allOf": _all_of, "if": _if, "$ref": _ref}
