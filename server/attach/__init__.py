"""Attach mode: serving from views over the host application's own tables."""
