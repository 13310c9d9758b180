"""Dev-only cross-check of marvel's TensorBoard event files against TensorBoard's own reader.

    bench/.venv/bin/python bench/python/tensorboard_check.py <logdir>

Loads the logdir with the EventAccumulator that `tensorboard --logdir` uses (the plugin one, which turns legacy
simple_value and Summary.Image values into its scalar and image plugins' tensors) and prints every scalar and image,
so the output can be compared with what marvel wrote. Needs `pip install tensorboard`; the npm tests never run it.
"""

import sys

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator
from tensorboard.util import tensor_util


def main(logdir: str) -> None:
    legacy = event_accumulator.EventAccumulator(logdir, size_guidance={"scalars": 0, "images": 0})
    legacy.Reload()
    tags = legacy.Tags()
    print(f"EventAccumulator: file_version={legacy.file_version!r}")
    for tag in tags["scalars"]:
        print(f"  scalar {tag}: " + ", ".join(f"step {e.step} = {e.value:.6g}" for e in legacy.Scalars(tag)))
    for tag in tags["images"]:
        for e in legacy.Images(tag):
            png = e.encoded_image_string
            is_png = png[:8] == PNG_SIGNATURE
            print(f"  image {tag}: step {e.step}, {e.width}x{e.height}, {len(png)} bytes, PNG signature {is_png}")

    plugins = plugin_event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0})
    plugins.Reload()
    print("plugin EventAccumulator (what the TensorBoard server serves):")
    for tag in plugins.Tags()["tensors"]:
        plugin = plugins.SummaryMetadata(tag).plugin_data.plugin_name
        events = plugins.Tensors(tag)
        if plugin == "scalars":
            values = ", ".join(f"step {e.step} = {tensor_util.make_ndarray(e.tensor_proto).item():.6g}" for e in events)
            print(f"  [{plugin}] {tag}: {values}")
        else:
            shapes = [tensor_util.make_ndarray(e.tensor_proto).shape for e in events]
            print(f"  [{plugin}] {tag}: steps {[e.step for e in events]}, tensors {shapes}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
