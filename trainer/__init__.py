"""Recurrence Search trainer: a depth-recurrent GPT, exact val_bpb and a size-checked artifact."""
