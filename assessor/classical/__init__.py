"""The weight-free classical critic, the embedded default backend."""

from .critic import ClassicalAssessor, ClassicalConfig

__all__ = ["ClassicalAssessor", "ClassicalConfig"]
