"""The Neutron API's use cases (issue 12): networks (networks.py), tags (tags.py)."""
