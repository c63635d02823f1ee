"""Catalogue, loading and composition of diffusers pipelines."""
