"""The ground floor every stage stands on: config, schemas, paths (local, gs://, hf://), the
reject-reason vocabulary, funnel reports, spill files and stage markers. Imports nothing else of
zhclip, so every stage, filter and the trainer can read it."""
