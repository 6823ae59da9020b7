"""camkit plugin: bench (registrations come in its own issue)."""
