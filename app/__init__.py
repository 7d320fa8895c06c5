"""paraformer-asr: FunASR Paraformer speech recognition served over gRPC."""

__version__ = "0.1.0"
