"""What several test modules share: synthetic caches, image folders, the one fast training
config, hostile-file generators, the test server, the D3 fixture and child-process helpers.

Each submodule is imported by name (``from helpers.synthetic import write_synthetic_cache``)."""
