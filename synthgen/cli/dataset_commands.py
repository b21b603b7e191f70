"""synthgen run, verify and show."""
