"""asr_large: an ASR instance of the large, accurate pool (base).

For batch work and accuracy-sensitive streams.
"""
