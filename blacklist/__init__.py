"""Caption blacklists as plain data files, and their loader."""
