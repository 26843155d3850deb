"""Eviction policies: which chunk of a tier goes first."""
