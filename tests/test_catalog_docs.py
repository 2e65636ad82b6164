"""docs/CATALOG.md is what catalog_schema says, and catalog_schema documents everything a catalog holds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq

from catalog_schema import ARRAYS, MANIFEST, TABLES
from catalog_schema.docs import catalog_markdown
from catalog_schema.manifest import MANIFEST_KEYS
from catalog_schema.columns import doc
from catalog_schema.tables import TABLE_DOCS

ROOT = Path(__file__).resolve().parents[1]


def test_the_catalog_doc_in_the_repository_is_the_generated_one():
    written = (ROOT / "docs" / "CATALOG.md").read_text()
    assert written == catalog_markdown(), "docs/CATALOG.md is stale: python -m catalog_schema.docs > docs/CATALOG.md"


def test_every_table_column_and_array_is_described():
    assert set(TABLE_DOCS) == set(TABLES)
    undocumented = [f"{name}.{field.name}" for name, schema in TABLES.items() for field in schema if len(doc(field)) < 8]
    assert undocumented == []
    assert all(len(kind.doc) > 8 for kind in ARRAYS.values())
    text = catalog_markdown()
    for name, schema in TABLES.items():
        assert f"### {name}.parquet" in text
        for field in schema:
            assert f"| `{field.name}` | {field.type} |" in text, (name, field.name)
    for group in ARRAYS:
        assert f"| `{group}/<layer>` |" in text


def test_every_manifest_key_a_run_writes_is_described(undisturbed):
    """The keys of a real manifest (every stage but similarity) and every section a stage's write returns."""
    written = set(json.loads((undisturbed / MANIFEST).read_text()))
    assigned = {m for path in (ROOT / "pipeline").rglob("*.py")
                for m in re.findall(r"ManifestPart\(\{\"(\w+)\"", path.read_text())}
    assert "similarity" in assigned and "featvis" in written
    assert (written | assigned) - set(MANIFEST_KEYS) == set()


def test_the_parquet_files_carry_their_column_descriptions(undisturbed):
    """What a user of DuckDB or pandas sees without docs/CATALOG.md: each column's `doc` in the file's schema."""
    schema = pq.read_schema(undisturbed / "units.parquet")
    assert schema.field("act_max").metadata[b"doc"].decode() == doc(TABLES["units"].field("act_max"))
    assert "largest activation" in schema.field("act_max").metadata[b"doc"].decode()
