"""
rtunnel's pure core: codecs, arithmetic and syntax with no I/O and no reactor (nothing
from ``twisted.internet`` at import), tested as plain functions. It imports only itself,
:mod:`rtunnel.errors` and the standard library (``tests/pure/test_import_layers.py``).
"""
