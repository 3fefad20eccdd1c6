"""The local web demo (`avsr demo`): one loaded model behind a gradio page on 127.0.0.1."""

from avsr.demo.app import Demo, Shown, TaskOutput, serve, started

__all__ = ["Demo", "Shown", "TaskOutput", "serve", "started"]
