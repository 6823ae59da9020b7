"""CAM methods: one module per method, one hookimpl each."""
