"""The study file's JSON Schema, for editors (``raystudy schema > study.schema.json``).

Generated from the pydantic models that validate study files (``raystudy.study``), with the names the
registries know added as enums (models, tasks, metrics, regimes), so an editor completes them. The schema
checks the file's shape and names; the study loader still does the checks a schema cannot express (a
model that cannot take a task's input, grid size, resources), each as one line naming the field.
Every file in ``studies/`` names it on its first line::

    # yaml-language-server: $schema=../study.schema.json
"""
from __future__ import annotations

import itertools
import json
from typing import Any

SCHEMA_ID = "https://raystudy.dev/study.schema.json"


def regimes() -> list[str]:
    """Every regime in canonical form: ``base`` and the ``+``-joined subsets of the regularisers in order."""
    from raystudy.study import REGULARISERS

    parts = [list(c) for n in range(1, len(REGULARISERS) + 1) for c in itertools.combinations(REGULARISERS, n)]
    return ["base", *("+".join(p) for p in parts)]


def _one_or_many(prop: dict[str, Any], names: list[str]) -> None:
    """Add ``enum: names`` to every string alternative of a 'name or list of names' property."""
    for alt in prop.get("anyOf", [prop]):
        if alt.get("type") == "string":
            alt["enum"] = names
        elif alt.get("type") == "array" and alt.get("items", {}).get("type") == "string":
            alt["items"]["enum"] = names


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a study file. Cost: imports the spec, models and tasks (~3 s)."""
    from raystudy import models, tasks
    from raystudy.study import METRICS, Study

    schema = Study.model_json_schema()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}
    block = schema["$defs"]["Block"]["properties"]
    _one_or_many(block["model"], models.list_models())
    _one_or_many(block["task"], sorted({t for f in tasks.FAMILIES for t in tasks.list_tasks(f)}))
    _one_or_many(block["regime"], regimes())
    _one_or_many(block["metrics"], list(METRICS))
    return schema


def main() -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0
