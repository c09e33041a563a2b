"""The HTTP API: Litestar controllers and msgspec schemas, one module per resource."""
