"""The supervisor: makes the host equal to the database and records what it observed."""
