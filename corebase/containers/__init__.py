"""Containers: the table, the request-to-spec rules and the service behind /api/runtime."""
