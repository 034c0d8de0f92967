"""The `rbee` command: argument parsing and terminal output only."""
