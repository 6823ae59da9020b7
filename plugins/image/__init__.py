"""camkit plugin: image (registrations come in its own issue)."""
