"""Generation: a run's configuration, the shard plan and per-image seeds, the one recipe for image *i*
(``sampling``, run in the fast ``inference_form``), the actor that turns shards into files, ``show``, and the
Ray engine that drives the actors (``engine/``, the only part that imports ray)."""
