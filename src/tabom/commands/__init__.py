"""The ``tabom`` commands, one module each, above the components (DESIGN §8).

A command is one top-to-bottom program: config in, components called, outputs written. It
imports components only (never another command's private helpers); no component imports
this package or :mod:`tabom.cli` (``tests/test_imports.py`` pins both rules).
"""
