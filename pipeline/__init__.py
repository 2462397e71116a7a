"""zhclip's data pipeline: Beam jobs and everything that moves data between stages.

Importing this package imports neither Beam nor torch; stage modules do.

It does set ``NO_ALBUMENTATIONS_UPDATE``: albumentations, which img2dataset
imports, otherwise asks PyPI for a newer version of itself on import, and
zhclip must make no network call but the image fetches it is asked for. Set
here, it is in place before any stage (or a user's ``import img2dataset``
after importing zhclip) can load img2dataset, in spawned children too.
"""

import os as _os

_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
