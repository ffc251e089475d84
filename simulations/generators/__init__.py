"""Seeded, template-based text generators for the built-in scenarios."""
