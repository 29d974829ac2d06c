"""voxmesh: an autoscaling, GPU-aware speech-to-text serving mesh.

The library packages here hold what several services share; services under
``services/`` import them and never each other.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
