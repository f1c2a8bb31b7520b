"""A local Vast.ai (see server.py) and its host simulator (hosts.py)."""
