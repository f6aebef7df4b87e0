"""HTTP layer: routers (one per resource), dependencies, middleware and problem mapping."""
