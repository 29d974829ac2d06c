"""asr_small: an ASR instance of the small, fast pool (tiny.en).

For live captioning and other realtime streams.
"""
