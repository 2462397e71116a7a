"""zhclip's data pipeline: Beam jobs and everything that moves data between stages.

Importing this package imports neither Beam nor torch; stage modules do.
"""

__version__ = "0.1.0"
