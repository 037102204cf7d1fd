"""wobble."""
