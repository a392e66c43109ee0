"""Readers and writers, datalists and folds, and synthetic phantoms."""
