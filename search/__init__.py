"""Recurrence Search: Ray Tune + Optuna + ASHA over recurrence spaces."""
