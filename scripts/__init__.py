"""Operational scripts (not installed with the package); scripts.gpu is imported by its tests."""
