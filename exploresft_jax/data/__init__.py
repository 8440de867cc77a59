"""Record readers and validation, input pipelines and synthetic tasks."""
