"""Commands that are not operations of the API (serving it, for one)."""
