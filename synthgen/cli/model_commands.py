"""synthgen train, sample and models."""
