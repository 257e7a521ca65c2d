"""The committed JSON schemas match the specs (regenerate: engram-planner schema --out schema)."""

import json

from planner.loading import ROOT
from planner.schema import json_schemas


def test_committed_schemas_are_in_sync():
    for name, schema in json_schemas().items():
        path = ROOT / "schema" / f"{name}.schema.json"
        assert path.is_file(), f"missing {path}: run engram-planner schema --out schema"
        committed = json.loads(path.read_text())
        assert committed == json.loads(json.dumps(schema)), (
            f"{path} is stale: run `engram-planner schema --out schema`"
        )


def test_schema_forbids_unknown_keys():
    model = json_schemas()["model"]
    assert model["additionalProperties"] is False
    assert "table_size_per_head" in json.dumps(model)
