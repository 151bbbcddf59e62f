"""The tiny world: generated images, questions, dialogues and their dataset records.

See docs/tiny_world.md. Entry point: `build_world(out_dir, split)`.
"""

from emova.data.world.build import DEFAULT_SIZES, TASKS, WorldSizes, build_world, load_split
from emova.data.world.formats import (
    RecordError,
    SpeechRequest,
    fill_speech_units,
    load_records,
    records_needing_speech,
    validate_record,
)

__all__ = [
    "DEFAULT_SIZES",
    "RecordError",
    "SpeechRequest",
    "TASKS",
    "WorldSizes",
    "build_world",
    "fill_speech_units",
    "load_split",
    "load_records",
    "records_needing_speech",
    "validate_record",
]
