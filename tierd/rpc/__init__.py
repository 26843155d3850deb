"""The control plane: msgpack frames and the operations they carry."""
