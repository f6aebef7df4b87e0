"""Use cases: validate, claim names, write desired state plus an operation record.

Services work inside the caller's unit of work and never commit; the API nudges the
supervisor after the commit.
"""
