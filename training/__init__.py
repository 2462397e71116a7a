"""Chinese CLIP on zhclip shards: two-stage pretraining, fine-tuning on retrieval benchmarks,
evaluation, and exports (Chinese-CLIP, transformers, open_clip, ONNX)."""
