"""Applying a selection to a running model: hooks, cache cut, masks, and the prune() session."""
