"""``synthgen eval``: its configuration, the data it reads, feature spaces, metrics, figures and the report."""
