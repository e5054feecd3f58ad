"""Model-side building blocks. Imports neither Django nor ``modal`` eagerly, so it
runs inside the Modal container unchanged."""

from .config import ModalkitConfig, load_config
from .pipeline import InferenceOutputModel, InferencePipeline

__all__ = ["InferenceOutputModel", "InferencePipeline", "ModalkitConfig", "load_config"]
