"""The faces: the HTTP API and the dashboard."""
