"""Validate JSON bodies against OpenAI's published OpenAPI schemas.

The spec (``openapi.yaml``, OpenAPI 3.1) still carries two OpenAPI 3.0 habits that a JSON Schema
validator reads differently, so they are rewritten once at load time:

* ``nullable: true`` becomes ``anyOf: [<the schema>, {"type": "null"}]`` (an ``anyOf`` rather than
  ``type: [T, "null"]`` so that schemas with an ``enum``, ``$ref`` or ``oneOf`` accept null too);
* ``minimum: m`` with ``exclusiveMinimum: true`` becomes ``exclusiveMinimum: m``.

``#/components/schemas/...`` references resolve against the whole document. The schemas OpenAI
dropped from the current file (``legacy-schemas.yaml``) are merged into the same components, so
their references into ``openapi.yaml`` resolve as well.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["SPEC_DIR_ENV", "schema_names", "spec_dir", "validate"]

SPEC_DIR_ENV = "OPENAI_SPEC_DIR"
_DOCUMENT_URI = "urn:kakehashi:openai-openapi"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_MAX_REPORTED_ERRORS = 5


def spec_dir() -> Path:
    """The directory holding ``openapi.yaml`` and ``legacy-schemas.yaml``.

    ``$OPENAI_SPEC_DIR`` wins; otherwise ``../shared/openai`` beside the repository.
    """
    override = os.environ.get(SPEC_DIR_ENV)
    candidates = [Path(override)] if override else [_REPO_ROOT.parent / "shared" / "openai"]
    for candidate in candidates:
        if (candidate / "openapi.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"OpenAI spec not found in {[str(c) for c in candidates]}; "
        f"set {SPEC_DIR_ENV} to the directory holding openapi.yaml"
    )


def _load_yaml(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~10x faster
    with path.open("rb") as stream:
        return yaml.load(stream, Loader=loader)  # safe either way


def _convert_bound(schema: dict[str, Any], exclusive: str, inclusive: str) -> None:
    """``{minimum: m, exclusiveMinimum: true}`` → ``{exclusiveMinimum: m}`` (same for maximum)."""
    flag = schema.get(exclusive)
    if isinstance(flag, bool):
        del schema[exclusive]
        if flag and inclusive in schema:
            schema[exclusive] = schema.pop(inclusive)


def _convert(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 keywords in ``node`` (recursively) into JSON Schema 2020-12."""
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _convert(value) for key, value in node.items()}
    _convert_bound(converted, "exclusiveMinimum", "minimum")
    _convert_bound(converted, "exclusiveMaximum", "maximum")
    nullable = converted.pop("nullable", False)
    if nullable is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@functools.cache
def _document() -> dict[str, Any]:
    """openapi.yaml with the legacy schemas merged in, converted; loaded once per process."""
    directory = spec_dir()
    document = _load_yaml(directory / "openapi.yaml")
    schemas = document["components"]["schemas"]
    legacy_path = directory / "legacy-schemas.yaml"
    if legacy_path.is_file():
        for name, schema in _load_yaml(legacy_path)["components"]["schemas"].items():
            if name in schemas:
                raise ValueError(f"legacy schema {name} also exists in openapi.yaml")
            schemas[name] = schema
    return _convert(document)


@functools.cache
def _registry() -> Registry:
    resource = Resource.from_contents(_document(), default_specification=DRAFT202012)
    return Registry().with_resource(_DOCUMENT_URI, resource)


@functools.cache
def _validator(schema_name: str) -> Draft202012Validator:
    if schema_name not in _document()["components"]["schemas"]:
        raise KeyError(f"no schema named {schema_name!r} in the OpenAI spec")
    root = {"$ref": f"{_DOCUMENT_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(root, registry=_registry())


def schema_names() -> list[str]:
    """All schema names that :func:`validate` accepts."""
    return sorted(_document()["components"]["schemas"])


def _describe(error: ValidationError) -> str:
    where = error.json_path
    lines = [f"at {where}: {error.message}"]
    if error.context:  # anyOf/oneOf: say why each alternative failed
        for sub in sorted(error.context, key=lambda e: list(map(str, e.relative_schema_path))):
            branch = sub.relative_schema_path[0] if sub.relative_schema_path else "?"
            lines.append(f"    alternative {branch}: at {sub.json_path}: {sub.message}")
    return "\n  ".join(lines)


def validate(schema_name: str, instance: Any) -> None:
    """Check ``instance`` against ``components/schemas/<schema_name>``.

    Raises ``AssertionError`` listing the first few violations by JSON path.
    """
    errors = sorted(
        _validator(schema_name).iter_errors(instance),
        key=lambda error: (list(map(str, error.absolute_path)), error.message),
    )
    if not errors:
        return
    shown = "\n  ".join(_describe(error) for error in errors[:_MAX_REPORTED_ERRORS])
    more = len(errors) - _MAX_REPORTED_ERRORS
    suffix = f"\n  ... and {more} more" if more > 0 else ""
    raise AssertionError(f"body does not match OpenAI schema {schema_name}:\n  {shown}{suffix}")
