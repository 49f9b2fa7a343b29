"""Faithful stand-ins for servers that cannot run here (written from their API docs)."""
