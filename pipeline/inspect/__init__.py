"""`zhclip shards ...`: read-only tools over any shard folder (final or img2dataset downloads):
ls, stats, head, show, verify, report and the HTML browser."""
