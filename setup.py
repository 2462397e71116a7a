"""Packaging for zhclip.

The same file is what Dataflow's ``--setup_file`` builds into an sdist for its
workers, so the blacklist word lists must travel as package data (MANIFEST.in
and ``package_data`` both name them).
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "apache-beam==2.77.0",
    "img2dataset==1.47.0",
    "pyarrow>=17",
    "pandas>=2,<3",
    "polars>=1.0",
    "jieba==0.42.1",
    "opencc-python-reimplemented==0.1.7",
    "webdataset>=0.2.5,<0.3",
    "datasets>=3.0",
    "fsspec",
    "huggingface_hub",
    "pyyaml>=6",
    "pydantic>=2.7,<3",
    "tqdm>=4.62",
    "rich>=13",
    "pillow>=10",
    "imagehash>=4.3",
    "matplotlib>=3.8",
    # multilingual-clip 1.0.10 calls from_pretrained in __init__, which breaks
    # under transformers 5; pin the last 4.x line and load M-CLIP ourselves.
    "transformers==4.57.6",
    "sentencepiece>=0.2",
    "sacremoses",
    "multilingual-clip==1.0.10",
    "open_clip_torch==3.3.0",
    "torch==2.14.1",
    "torchvision==0.29.1",
]

TOP_FOLDERS = ("pipeline", "training", "filters", "blacklist")
PACKAGES = [
    f"zhclip.{name}"
    for top in TOP_FOLDERS
    for name in [top] + [f"{top}.{sub}" for sub in find_packages(where=top)]
]

setup(
    name="zhclip",
    version="0.1.0",
    description="Build a Chinese image-text corpus the Chinese CLIP way, and train Chinese CLIP on it.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The repository keeps the folders users asked for (pipeline/, training/,
    # filters/, blacklist/); installed, they import as zhclip.<folder>, so a
    # user's own `training/` or `pipeline/` package never shadows ours (or ours
    # theirs). `zhclip` itself is a namespace package with no __init__.
    packages=PACKAGES,
    package_dir={f"zhclip.{top}": top for top in TOP_FOLDERS},
    package_data={"zhclip.blacklist": ["lists/*.txt"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "train": ["tensorboard"],
        "dataflow": ["apache-beam[gcp]==2.77.0"],
        "dev": ["pytest>=8", "pytest-timeout", "hypothesis>=6", "ruff>=0.6", "import-linter==2.16",
                "cn-clip==1.6.0",
                ],
    },
    entry_points={"console_scripts": ["zhclip=zhclip.pipeline.cli:main"]},
)
