"""The HTTP server of the ingest and query roles: one ASGI app (`serve`), what its
routes share (`http`), its OpenAPI document, and deadlines on its connections."""
