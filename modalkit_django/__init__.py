"""modalkit-django: a durable job service in front of a Modal inference class."""

__version__ = "0.1.0"
__all__ = ["__version__"]
