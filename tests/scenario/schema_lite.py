"""A small JSON Schema validator: the subset docs/scenario.schema.json uses.

Keywords: type, properties, additionalProperties, required, propertyNames, enum,
const, pattern, minimum, exclusiveMinimum, minLength, minItems, minProperties,
items, allOf, anyOf, oneOf, not, local $ref.  Annotations (description,
default, title, $schema, $id) are ignored.  Unknown keywords raise, so the
schema cannot silently use something this validator does not check.
"""

from __future__ import annotations

import re

_IGNORED = {"$schema", "$id", "$defs", "title", "description", "default"}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def _resolve(root: dict, ref: str) -> dict:
    assert ref.startswith("#/"), f"only local $ref: {ref}"
    node = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def errors(value, schema: dict, root: dict | None = None, path: str = "$") -> list[str]:
    """Every violation of ``schema`` by ``value`` (empty list: valid)."""
    root = root if root is not None else schema
    out: list[str] = []
    for key, arg in schema.items():
        if key in _IGNORED:
            continue
        if key == "$ref":
            out += errors(value, _resolve(root, arg), root, path)
        elif key == "type":
            types = arg if isinstance(arg, list) else [arg]
            if not any(_TYPES[t](value) for t in types):
                out.append(f"{path}: not of type {arg}")
        elif key == "properties":
            if isinstance(value, dict):
                for k, sub in arg.items():
                    if k in value:
                        out += errors(value[k], sub, root, f"{path}.{k}")
        elif key == "additionalProperties":
            if isinstance(value, dict):
                extra = [k for k in value if k not in schema.get("properties", {})]
                for k in extra:
                    if arg is False:
                        out.append(f"{path}: unknown key {k!r}")
                    elif isinstance(arg, dict):
                        out += errors(value[k], arg, root, f"{path}.{k}")
        elif key == "required":
            if isinstance(value, dict):
                out += [f"{path}: missing {k!r}" for k in arg if k not in value]
        elif key == "propertyNames":
            if isinstance(value, dict):
                for k in value:
                    out += errors(k, arg, root, f"{path}[{k!r}]")
        elif key == "enum":
            if value not in arg or isinstance(value, bool):
                out.append(f"{path}: {value!r} not in {arg}")
        elif key == "const":
            if value != arg:
                out.append(f"{path}: {value!r} is not {arg!r}")
        elif key == "pattern":
            if isinstance(value, str) and not re.search(arg, value):
                out.append(f"{path}: {value!r} does not match {arg}")
        elif key == "minimum":
            if _TYPES["number"](value) and value < arg:
                out.append(f"{path}: {value} < {arg}")
        elif key == "exclusiveMinimum":
            if _TYPES["number"](value) and value <= arg:
                out.append(f"{path}: {value} <= {arg}")
        elif key == "minLength":
            if isinstance(value, str) and len(value) < arg:
                out.append(f"{path}: shorter than {arg}")
        elif key == "minItems":
            if isinstance(value, list) and len(value) < arg:
                out.append(f"{path}: fewer than {arg} items")
        elif key == "minProperties":
            if isinstance(value, dict) and len(value) < arg:
                out.append(f"{path}: fewer than {arg} properties")
        elif key == "items":
            if isinstance(value, list):
                for i, v in enumerate(value):
                    out += errors(v, arg, root, f"{path}[{i}]")
        elif key == "allOf":
            for sub in arg:
                out += errors(value, sub, root, path)
        elif key == "anyOf":
            if not any(not errors(value, sub, root, path) for sub in arg):
                out.append(f"{path}: matches none of anyOf")
        elif key == "oneOf":
            n = sum(1 for sub in arg if not errors(value, sub, root, path))
            if n != 1:
                out.append(f"{path}: matches {n} of oneOf (exactly 1 needed)")
        elif key == "not":
            if not errors(value, arg, root, path):
                out.append(f"{path}: matches a 'not' schema")
        else:
            raise ValueError(f"schema keyword {key!r} is not supported by schema_lite")
    return out
