"""Built-in apps, written against the same interface as a user's own."""
