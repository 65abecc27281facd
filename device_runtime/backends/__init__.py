"""Runtime backends, one module per runtime (`.pte` has two: `executorch`, the binding, and `executorch_numpy`); each
registers itself on import and imports its runtime lazily.

Helper modules beside them register nothing (`tflite_verifier`: the pure-Python TFLite flatbuffer check;
`pte_program`: the pure-Python reader of what a `.pte` asks of its runtime).
"""
