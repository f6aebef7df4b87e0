"""The Neutron v2.0 view of kvmnetd's resources (issue 12): networks (networks.py), subnets
(subnets.py: pure mappings between Neutron's attributes and our managed networks) and tags
(tags.py). Writes go through the native services, so validation, quotas, scoping and
operations are the native ones."""
