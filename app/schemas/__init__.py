"""Pydantic request/response models of the REST API (never ORM classes)."""
