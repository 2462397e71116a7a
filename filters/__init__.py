"""Pure filter functions over records and Arrow arrays.

Nothing here imports Beam or torch at module level, so every rule can be tested
and reused without a pipeline.
"""
