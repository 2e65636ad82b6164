"""The analyses, one package each behind the `Stage` protocol (protocol.py); pipeline/registry.py lists them."""
