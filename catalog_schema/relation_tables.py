"""Tables of units in relation to other units: nearest units (similarity) and connections (expanded weights)."""

from __future__ import annotations

import pyarrow as pa

from catalog_schema.columns import LAYER, UNIT, column

SIMILAR = pa.schema([  # the similarity stage: each unit's nearest units, per compared layer and kind
    column("layer", pa.string(), LAYER, required=True),
    column("unit", pa.int32(), UNIT, required=True),
    column("other_layer", pa.string(), "the same layer, or the one just before or after it", required=True),
    column("other_unit", pa.int32(), "the neighbour's unit number in other_layer", required=True),
    column("kind", pa.string(), "'activation' (Pearson, probe images) | 'weight' (cosine, same layer)", required=True),
    column("score", pa.float32(), "the similarity: Pearson correlation (activation) or cosine (weight)"),
    column("rank", pa.int32(), "0 = the nearest of its (other_layer, kind)"),
])

CONNECTIONS = pa.schema([  # the connections stage: each unit's strongest inputs and outputs, excitatory and inhibitory
    column("layer", pa.string(), LAYER, required=True),
    column("unit", pa.int32(), UNIT, required=True),
    column("direction", pa.string(), "'input': other_unit is in the cataloged layer before, feeding this unit; "
           "'output': in the layer after, fed by it", required=True),
    column("other_layer", pa.string(), "the cataloged layer just before (inputs) or after (outputs)", required=True),
    column("other_unit", pa.int32(), "the connected unit's number in other_layer", required=True),
    column("weight", pa.float32(), "the expanded weight, summed over positions: the change of the later unit at the "
           "centre of its map per unit increase of the earlier unit everywhere (ReLUs as identity, max-pooling as "
           "average); > 0 excites, < 0 inhibits", required=True),
    column("rank", pa.int32(), "0 = the strongest of its direction and sign", required=True),
])
