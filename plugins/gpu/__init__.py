"""camkit plugin: gpu (registrations come in its own issue)."""
