"""Runtime backends, one module per format; each registers itself on import and imports its runtime lazily.

Helper modules beside them register nothing (`tflite_verifier`: the pure-Python TFLite flatbuffer check).
"""
