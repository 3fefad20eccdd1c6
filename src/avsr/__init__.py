"""avsr: LLM-based audio-visual speech recognition. `avsr.transcribe(path, checkpoint=...)` is the
one-call API (see avsr.transcription); it is imported on first use, so `import avsr` stays light."""


def __getattr__(name: str):
    if name == "transcribe":
        from avsr.transcription import transcribe

        return transcribe
    raise AttributeError(f"module 'avsr' has no attribute {name!r}")
