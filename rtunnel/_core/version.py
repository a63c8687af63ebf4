"""rtunnel's version, in one place low enough for every layer to read it."""

__version__ = "0.1.0.dev0"
