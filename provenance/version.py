"""The package version, importable without importing the package's readers."""
__version__ = "0.1.0"
