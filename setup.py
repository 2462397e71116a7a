"""Packaging for zhclip.

The same file is what Dataflow's ``--setup_file`` builds into an sdist for its
workers, so the blacklist word lists must travel as package data (MANIFEST.in
and ``package_data`` both name them).
"""

from setuptools import find_packages, setup

# The base install runs stages 1 and 2 (and `zhclip shards`): no torch,
# transformers or open_clip, so Dataflow workers for those stages stay light.
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
]

# multilingual-clip 1.0.10 calls from_pretrained in __init__, which breaks
# under transformers 5; pin the last 4.x line and load M-CLIP ourselves.
TORCH_STACK = ["torch==2.14.1", "torchvision==0.29.1", "transformers==4.57.6"]
# Stage 1's `marian` translation backend (the `lookup` one needs nothing).
TRANSLATE = TORCH_STACK + ["sentencepiece>=0.2", "sacremoses"]
# Stage 3 scorers: M-CLIP, open_clip, a zhclip export.
SCORE = TRANSLATE + ["multilingual-clip==1.0.10", "open_clip_torch==3.3.0"]
TRAIN = TORCH_STACK + ["open_clip_torch==3.3.0", "tensorboard"]
# Stage 3's optional image-safety rule: NudeNet ships its ONNX detector in the wheel.
SAFETY = ["nudenet>=3.4", "onnxruntime>=1.17"]
# `zhclip export --format onnx` and `zhclip eval` on an ONNX folder.
ONNX = ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.17"]
# `zhclip search` over the corpus embeddings: faiss, and the stage-3 scorer for the query.
SEARCH = SCORE + ["faiss-cpu>=1.8"]
DEV = [
    "pytest>=8",
    "pytest-timeout",
    "hypothesis>=6",
    "ruff>=0.6",
    "import-linter==2.16",
    # The ecosystem's own clients, run by the tests as references:
    "apache-beam[gcp]==2.77.0",  # Beam's GCS client (GCSFileSystem)
    "gcp-storage-emulator",  # GCS JSON API on loopback
    "gcsfs",  # fsspec's gs:// for the parts that use fsspec
    "clip-benchmark",  # CLIP_benchmark's CLI on an open_clip export
    "autofaiss",  # builds the kNN index from OUT/embeddings as-is
    "lmdb",  # cn_clip's fine-tuning data layout
    "scikit-image",  # real photographs shipped in the wheel, for image rules
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
        "translate": TRANSLATE,
        "score": SCORE,
        "train": TRAIN,
        "dataflow": ["apache-beam[gcp]==2.77.0"],
        "safety": SAFETY,
        "onnx": ONNX,
        "search": SEARCH,
        # everything: every stage, training and the test tools
        "dev": sorted(set(SCORE + TRAIN + SAFETY + ONNX + SEARCH)) + DEV,
    },
    entry_points={"console_scripts": ["zhclip=zhclip.pipeline.cli:main"]},
)
