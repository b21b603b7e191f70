"""synthgen: train image generators, then mass-produce deterministic synthetic datasets on Ray."""

__version__ = "0.8.0"
