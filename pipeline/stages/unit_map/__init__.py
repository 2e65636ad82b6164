"""The unit_map stage: a 2-D layout of each layer's units (PaCMAP), for the site's per-layer map."""
