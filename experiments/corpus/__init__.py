"""Training corpus from public repositories: one adapter per source, one builder (``build.py``)."""
