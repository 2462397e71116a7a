"""One answer to "which torch device does this config value mean".

Translation (stage 1), scoring (stage 3) and training all take a ``device``
setting: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or
``cuda:N``. torch is imported only when this is called, so the ground floor
stays importable on a stage-1/2 worker without torch.
"""

from __future__ import annotations

from zhclip.pipeline.core.errors import ConfigError


def resolve_device(device: str, key: str = "device", local_rank: int | None = None) -> str:
    """The torch device string for the config value ``device`` (named ``key`` in errors).

    ``local_rank``, for one process of a multi-GPU run, picks ``cuda:<local_rank>``
    when the value does not name an index. A value torch does not parse, or CUDA
    asked for where there is none, is a ConfigError that says what to set instead.
    """
    import torch

    has_cuda = torch.cuda.is_available()
    if device == "auto":
        if not has_cuda:
            return "cpu"
        return f"cuda:{local_rank}" if local_rank is not None else "cuda"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"{key} {device!r} is not a torch device; use auto, cpu or cuda[:N]") from exc
    if parsed.type == "cuda":
        if not has_cuda:
            raise ConfigError(f"{key} is {device!r} but CUDA is not available here; use auto or cpu")
        if parsed.index is None and local_rank is not None:
            return f"cuda:{local_rank}"
    return device
