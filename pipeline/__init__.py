"""Interference Eraser (IEr) pipeline: every piece of logic the DVC stages call."""
