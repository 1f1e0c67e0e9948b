"""handfirst generation: the hand generator (stage 1), the body outpainter (stage 2) and their training.

Public classes are imported lazily, so `python -m generation --help` does not pay for importing torch
and diffusers. Add an export with one line in `_EXPORTS`.
"""

from importlib import import_module

# public name -> module that defines it
_EXPORTS = {
    "BodyOutpaintPipeline": "generation.pipelines.body",
    "HandGenerationPipeline": "generation.pipelines.hand",
    "HandGenerationPipelineOutput": "generation.pipelines.hand",
    "HandUNet": "generation.models.hand",
    "TwoStageHandBodyPipeline": "generation.pipelines.two_stage",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'generation' has no attribute {name!r}")
