"""Persistence: SQLAlchemy 2 models, the unit of work, repositories and migrations."""
