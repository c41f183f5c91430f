"""Hypothesis strategies from JSON schemas (the app's OpenAPI components): values that fit, and values that don't.

Small on purpose: the keywords pydantic writes ($ref, anyOf, const, enum, type, bounds, lengths,
required, additionalProperties), with sizes capped so that examples stay cheap.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def from_schema(schema: dict, components: dict, overrides: dict[str, st.SearchStrategy] | None = None,
                depth: int = 0) -> st.SearchStrategy:
    """Values valid under `schema` (refs resolved in `components`); `overrides` replace properties by name."""
    overrides = overrides or {}
    if "$ref" in schema:
        return st.deferred(lambda: from_schema(components[schema["$ref"].rsplit("/", 1)[1]], components, overrides,
                                               depth + 1))
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(s, components, overrides, depth) for s in schema[key]])
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return from_schema(schema["allOf"][0], components, overrides, depth)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 24), 24))
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.integers(None if low is None else math.ceil(low), None if high is None else math.floor(high))
    if kind == "number":
        return st.floats(min_value=schema.get("minimum", schema.get("exclusiveMinimum")),
                         max_value=schema.get("maximum", schema.get("exclusiveMaximum")),
                         exclude_min="exclusiveMinimum" in schema, exclude_max="exclusiveMaximum" in schema,
                         allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = from_schema(schema.get("items", {}), components, overrides, depth + 1)
        low = schema.get("minItems", 0)
        return st.lists(items, min_size=low, max_size=max(low, min(schema.get("maxItems", 3), 3)))
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        if not properties:
            values = from_schema(schema.get("additionalProperties", {}), components, overrides, depth + 1)
            return st.dictionaries(st.text(max_size=8), values, max_size=3)
        required = set(schema.get("required", ()))
        fields = {name: overrides[name] if name in overrides else from_schema(sub, components, overrides, depth + 1)
                  for name, sub in properties.items()}
        return st.fixed_dictionaries({k: v for k, v in fields.items() if k in required},
                                     optional={k: v for k, v in fields.items() if k not in required})
    return JSON


def broken(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Valid objects with one field dropped, set to junk, or an extreme number: what clients get wrong."""

    @st.composite
    def mutate(draw):
        value = dict(draw(valid))
        if not value:
            return value
        key = draw(st.sampled_from(sorted(value)))
        action = draw(st.sampled_from(["drop", "junk", "number", "huge"]))
        if action == "drop":
            del value[key]
        elif action == "junk":
            value[key] = draw(JSON)
        elif action == "number":
            value[key] = draw(st.integers() | st.floats(allow_nan=False, allow_infinity=False))
        else:
            value[key] = draw(st.sampled_from([2**64, -(2**63) - 1, 10**30, 1e308, -1e308, 0, -1, 0.5, "", [], {}]))
        return value

    return mutate()
