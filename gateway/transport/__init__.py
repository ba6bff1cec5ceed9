"""Talking to mail servers. Returns typed outcomes; never touches the database."""
