"""cmkd-bench: a benchmark suite for cross-modal knowledge distillation."""

__version__ = "0.1.0"
