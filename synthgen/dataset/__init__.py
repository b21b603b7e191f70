"""A synthgen dataset on disk: its format, the shard writers, the output directory's life (lock, resume,
overwrite, space guard, finishing), the manifest and card, and verification."""
