"""Two-stage Chinese CLIP pretraining on zhclip shards."""
