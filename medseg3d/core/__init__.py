"""Core: constants, errors, logging, atomic file writes, the checkpoint format and rank helpers.

Imports nothing else of medseg3d: every other layer builds on it.
"""
