"""Shipped taxonomy files (package data)."""
