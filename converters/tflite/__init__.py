"""LiteRT / TensorFlow Lite `.tflite`: the converter (`converter`, registered as `tflite` on import) and what it
reads and writes in the flatbuffer itself (`flatbuffer`: inspection, float I/O, static quantization steps)."""
from converters.tflite import converter  # noqa: F401 (registers the format)
