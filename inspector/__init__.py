"""inspector: an inline packet inspector for Linux mail and SSH servers."""

__version__ = "0.1.0"
