"""Built-in enrichers, shipped with rybbit-track. Third-party code must not import this package."""
