"""Vast.ai: the typed config and the offer source (instances are not provisioned yet)."""
