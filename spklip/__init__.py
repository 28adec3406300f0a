"""spklip."""
