"""layerwise: layer-wise PT vs FT representation analysis with sparse autoencoders.

Reproduces Nadipalli (2025), arXiv 2502.16722, as a DVC pipeline. Importing the package is
cheap on purpose: heavy libraries (torch, transformers, mlflow) load inside the modules that
need them.
"""

__version__ = "0.1.0"
