"""How a catalog column is declared: its name, type, whether it may be null, and its description (`doc`), which
travels in each Parquet file's schema."""

from __future__ import annotations

import pyarrow as pa


def column(name: str, kind: pa.DataType, doc: str, required: bool = False) -> pa.Field:
    """One documented column; `required` columns are never null."""
    return pa.field(name, kind, nullable=not required, metadata={"doc": doc})


def doc(field: pa.Field) -> str:
    """A column's description."""
    return (field.metadata or {}).get(b"doc", b"").decode()


LAYER = "the cataloged module's path in the model (as in [model] layers); '<path>..features': its dictionary's features"
UNIT = "the unit's number: its channel index in the layer's output"
