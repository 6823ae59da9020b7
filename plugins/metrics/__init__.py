"""camkit plugin: metrics (registrations come in its own issue)."""
