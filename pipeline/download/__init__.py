"""Stage 2, ``zhclip download``: URL shards -> downloaded webdataset shards (img2dataset
behind the guarded fetch)."""
