"""The streaming ASR engine and instance shared by asr_small and asr_large.

audio (decode/resample) -> vad (endpointing) -> session (per stream) ->
scheduler (batches across streams) -> decoder (faster-whisper / CTranslate2);
servicer and instance expose it over gRPC; app wires a process.
"""
