"""Built-in camkit plugins, each registered through the `camkit` entry-point group."""
