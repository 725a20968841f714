"""The models read only what docs/openapi.json promises, with compatible types."""

from __future__ import annotations

import dataclasses
import json
from typing import (
    Any,
    Dict,
    List,
    Optional,
    Set,
    Tuple,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import pytest

from thaw_client import models

from .conftest import REPO

SCHEMAS: Dict[str, Any] = json.loads((REPO / "docs" / "openapi.json").read_text())["components"][
    "schemas"
]
JSON_TYPES = {
    int: {"integer"},
    float: {"number", "integer"},
    str: {"string"},
    bytes: {"string"},
    bool: {"boolean"},
}


def _name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _unwrap(prop: Dict[str, Any]) -> Tuple[Dict[str, Any], bool]:
    """The schema of a property without its null alternative, and whether it may be null
    (OpenAPI 3.1: ``type: [T, "null"]`` or ``oneOf: [{type: null}, S]``; 3.0: ``nullable``)."""
    nullable = bool(prop.get("nullable"))
    if "oneOf" in prop:
        rest = [p for p in prop["oneOf"] if p.get("type") != "null"]
        nullable = nullable or len(rest) < len(prop["oneOf"])
        if len(rest) == 1:
            prop = rest[0]
    types = prop.get("type")
    if isinstance(types, list):
        nullable = nullable or "null" in types
        rest_types = [t for t in types if t != "null"]
        prop = {**prop, "type": rest_types[0] if len(rest_types) == 1 else rest_types}
    return prop, nullable


def _ref(prop: Dict[str, Any]) -> Optional[str]:
    ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("allOf", []) if "$ref" in a), None)
    return _name(ref) if ref else None


def _resolve(prop: Dict[str, Any]) -> Dict[str, Any]:
    """A reference to a plain schema (a name, an enum) replaced by that schema."""
    ref = _ref(prop)
    return SCHEMAS[ref] if ref and "properties" not in SCHEMAS[ref] else prop


def _object(schema: Dict[str, Any]) -> Tuple[Dict[str, Any], Set[str]]:
    """An object schema's properties and required keys, ``allOf`` parts merged."""
    props: Dict[str, Any] = dict(schema.get("properties", {}))
    required: Set[str] = set(schema.get("required", []))
    for part in schema.get("allOf", []):
        sub = SCHEMAS[_name(part["$ref"])] if "$ref" in part else part
        p, r = _object(sub)
        props.update(p)
        required |= r
    # A tagged union (``oneOf`` of objects): every variant's properties; a key is
    # required only when every variant requires it.
    variants = [_object(SCHEMAS[_name(v["$ref"])] if "$ref" in v else v) for v in schema.get("oneOf", [])]
    if variants:
        for p, _ in variants:
            props.update(p)
        required |= set.intersection(*(r for _, r in variants))
    return props, required


def _mismatch(tp: Any, prop: Dict[str, Any], where: str) -> List[str]:
    if dataclasses.is_dataclass(tp):
        ref = _ref(prop)
        return [] if ref == tp.SCHEMA else [f"{where}: {tp.__name__} but the schema has {ref}"]
    prop = _resolve(prop)
    if get_origin(tp) in (dict, Dict):
        if prop.get("type") != "object":
            return [f"{where}: a dict but the schema has {prop.get('type')}"]
        return _mismatch(get_args(tp)[1], prop.get("additionalProperties", {}), where + "{}")
    if get_origin(tp) in (list, List):
        if prop.get("type") != "array":
            return [f"{where}: a list but the schema has {prop.get('type')}"]
        return _mismatch(get_args(tp)[0], prop["items"], where + "[]")
    if prop.get("type") not in JSON_TYPES[tp]:
        return [f"{where}: {tp.__name__} but the schema has {prop.get('type')}"]
    return []


def schema_problems(cls: Any) -> List[str]:
    """What in model ``cls`` the schema it names does not back."""
    schema = SCHEMAS.get(cls.SCHEMA)
    if schema is None:
        return [f"{cls.__name__}: no schema {cls.SCHEMA} in docs/openapi.json"]
    props, required = _object(schema)
    problems = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = models.json_key(f)
        where = f"{cls.__name__}.{f.name} ({cls.SCHEMA}.{key})"
        if key not in props:
            problems.append(f"{where}: not in the schema")
            continue
        tp, optional = hints[f.name], False
        if get_origin(tp) is Union:
            (tp,) = [a for a in get_args(tp) if a is not type(None)]
            optional = True
        prop, nullable = _unwrap(props[key])
        if not optional and (key not in required or nullable):
            problems.append(f"{where}: may be missing or null, the model needs it")
        problems += _mismatch(tp, prop, where)
    return problems


@pytest.mark.parametrize("cls", models.MODELS, ids=lambda c: c.__name__)
def test_model_matches_openapi(cls: Any) -> None:
    assert schema_problems(cls) == []


def test_the_check_catches_drift() -> None:
    @dataclasses.dataclass
    class Drifted:
        SCHEMA = "PoolStatus"
        tag: int
        gone: str
        last_error: str

    problems = schema_problems(Drifted)
    assert any("tag" in p and "integer" not in p for p in problems), problems
    assert any("gone" in p and "not in the schema" in p for p in problems), problems
    assert any("last_error" in p and "null" in p for p in problems), problems


def test_exec_output_decodes_bytes() -> None:
    result = models.from_json(
        models.ExecResult,
        {"exit_code": 1, "stdout_base64": "/wBh", "stderr_base64": "", "future": 1},
    )
    assert result == models.ExecResult(1, b"\xff\x00a", b"")
