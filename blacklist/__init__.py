"""Caption blacklists as plain data files, and their loader."""

from zhclip.blacklist.loader import BlacklistEntry, available_lists, load_entries

__all__ = ["BlacklistEntry", "available_lists", "load_entries"]
