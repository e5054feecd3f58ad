"""modalkit-django: a durable job service in front of a Modal inference class."""

__version__ = "0.2.0.dev0"
__all__ = ["__version__"]
