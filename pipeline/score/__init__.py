"""Stage 3, ``zhclip score``: downloaded shards -> decoded, rescored (M-CLIP or another
backend), thresholded and image-deduplicated pairs -> the final dataset."""
