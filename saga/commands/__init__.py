"""CLI command groups (thin: parse options, call the API, print with rich)."""
