"""Models under test. Concrete adapters are imported by Hydra `_target_`, never here, so heavy
backends load only when chosen."""

from nbeval.adapters.base import EditRequest, GenRequest, GenResult, ModelAdapter

__all__ = ["EditRequest", "GenRequest", "GenResult", "ModelAdapter"]
