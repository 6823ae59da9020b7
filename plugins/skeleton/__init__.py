"""camkit plugin: skeleton (registrations come in its own issue)."""
