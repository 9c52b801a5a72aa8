"""pixelseg's version (also in pyproject.toml), importable without the package's API."""

__version__ = "0.1.0"
