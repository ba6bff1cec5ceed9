"""The shell: where I/O and time meet the core."""
