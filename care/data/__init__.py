"""Dataset schema (SEED-Bench-R1 layout), annotation validation, and the demo-benchmark generator."""

from care.data.schema import ANNOTATION_FILES, LETTERS, Reject, Sample

__all__ = ["ANNOTATION_FILES", "LETTERS", "Reject", "Sample"]
