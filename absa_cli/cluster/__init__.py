"""The Ray layer: the only package that imports ray (worker actors, the worker group, cluster connection)."""
