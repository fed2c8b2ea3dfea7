"""Data files that ship with xpcnn (see README.md here)."""
