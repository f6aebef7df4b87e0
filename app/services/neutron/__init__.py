"""The Neutron v2.0 view of kvmnetd's resources (issue 12): pure mappings between Neutron's
attributes and our native rows and request models. Writes still go through the native
services, so validation, quotas, scoping and operations are the native ones."""
