"""Stage 1, ``zhclip metadata``: sources -> normalised captions -> the paper's text rules -> URL
dedup -> URL shards and rejects; plus English->Chinese translation of COCO and Visual Genome."""
