"""Recurrence Search spaces: declarative search spaces and the artifact size model."""
