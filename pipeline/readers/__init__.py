"""Readers that turn a user's files on disk into a `pipeline.data.Dataset`."""
