"""variants package."""
