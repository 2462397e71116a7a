"""The shard formats between stages: reading img2dataset downloads, writing and verifying the
final webdataset + parquet dataset, its manifest and dataset card, and loaders for users."""
