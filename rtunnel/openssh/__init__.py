"""
The ``rtunnel`` command line's grammar, OpenSSH's: ``-R`` forwards, ``-o`` options, the
settings of one invocation, and the lines ``ssh`` prints. Used by the command
(:mod:`rtunnel.cli`) and the twistd plugin (:mod:`rtunnel.service`); the library never
imports it (``tests/pure/test_import_layers.py``).
"""
