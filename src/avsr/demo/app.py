"""`avsr demo`: a local web page over one loaded model. Upload a video (or pick an example),
see the mouth crops the model reads, and ASR, VSR and AVSR transcripts side by side.

`Demo` is the page's logic without the page (a video in, what the page shows out), so it is
tested without a browser; `build_page` only wires gradio widgets to it; `started` loads
everything and serves on 127.0.0.1 only (never a public link), with gradio's analytics off:
nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avsr.demo.examples import Example, corpus_examples, folder_examples
from avsr.errors import AvsrError
from avsr.models.tasks import MODALITIES, TASKS, RatePair, scale_name, tokens_per_second

HOST = "127.0.0.1"
PREVIEW_FRAMES = 8


@dataclass
class TaskOutput:
    text: str  # the transcript ("" when the task did not run)
    note: str  # score, rates and time, or why the task did not run


@dataclass
class Shown:
    """What the page shows for one video."""
    roi: np.ndarray | None  # (96, n*98-2) uint8 strip of mouth crops; None without a face
    about: str  # one line of Markdown: duration, face frames, warnings
    tasks: dict[str, TaskOutput] = field(default_factory=dict)


def score_of(transcript) -> tuple[float, float] | None:
    """(score, confidence) of a transcript: its decoded segments' length-normalised
    log-probabilities and confidences averaged by duration (a clip of at most 16 s is one
    segment: its own); None when no segment was decoded (too short, silent or still)."""
    decoded = [s for s in transcript.segments if s.score is not None]
    weights = [s.end - s.start for s in decoded]
    if not decoded:
        return None
    return (sum(w * s.score for w, s in zip(weights, decoded)) / sum(weights),
            sum(w * s.confidence for w, s in zip(weights, decoded)) / sum(weights))


def roi_strip(video: np.ndarray, count: int = PREVIEW_FRAMES) -> np.ndarray:
    """`count` crops evenly spaced over the clip, side by side with a white 2-pixel gap."""
    picks = video[np.linspace(0, len(video) - 1, min(count, len(video))).round().astype(int)]
    gap = np.full((video.shape[1], 2), 255, np.uint8)
    return np.concatenate([part for crop in picks for part in (crop, gap)][:-1], axis=1)


class Demo:
    """One Transcriber, loaded once, and the rate pairs its model was trained at."""

    def __init__(self, transcriber):
        self.transcriber = transcriber
        self.tasks = transcriber.tasks
        self.knowledge = transcriber.knowledge  # what the model can write (None: a real corpus): said on the page
        self.model = transcriber.model  # loaded here, once, before the page is served
        read = {m for t in self.tasks for m in MODALITIES[t]}
        audio = self.model.rates["audio"] if "audio" in read else (None,)
        video = self.model.rates["video"] if "video" in read else (None,)
        # The page's rate choices: full (audio, video) pairs; each task reads its modalities' rates.
        self.rate_choices = {f"{a or '-'},{v or '-'}": RatePair(a, v) for a in audio for v in video}

    def rate_label(self, value: str) -> str:
        pair = self.rate_choices[value]
        return ", ".join(f"{m} ÷{r}" for m, r in zip(("audio", "video"), pair) if r is not None)

    def rejected(self, video: str | Path | None, err: AvsrError) -> str:
        """Why an upload is refused, as the page shows it (the file by its name: an upload's path
        is a gradio temporary one), logged as one line: a user's bad file is not a server error."""
        name = Path(video).name if video else "(no video)"
        reason = str(err).replace(str(video), name) if video else str(err)
        print(f"avsr demo: rejected {name}: {reason}", file=sys.stderr, flush=True)
        return reason

    def run(self, video: str | Path, rates: str | None = None) -> Shown:
        """Preprocess the file once, as Transcriber does, then transcribe it with every trained
        task at `rates` (a key of `rate_choices`; None: the first trained pair). A task the
        recording cannot serve (no face for VSR) says why in its note; the others still run."""
        pair = self.rate_choices[rates] if rates else None
        ((pre, seconds),) = self.transcriber.prepare([video])
        faces = [f"face in {pre.face_frames}/{pre.total_frames} frames"] if pre.total_frames else []
        about = " · ".join([f"{pre.duration:.2f} s", *faces, "audio" if pre.audio is not None else "no audio",
                            f"preprocessed in {seconds:.2f} s", *pre.warnings])
        shown = Shown(roi_strip(pre.video) if pre.video is not None and len(pre.video) else None, about)
        for task in TASKS:
            if task not in self.tasks:
                shown.tasks[task] = TaskOutput("", f"this checkpoint was not trained for {task.upper()}")
                continue
            try:
                (transcript,) = self.transcriber.transcribe([pre], task=task, rates=pair)
            except AvsrError as err:  # the file by its name: an upload's path is a gradio temporary one
                why = str(err).replace(str(pre.source), Path(pre.source).name)
                shown.tasks[task] = TaskOutput("", f"not run: {why}")
                continue
            task_pair = self.model.check_pair(task, pair)
            shown.tasks[task] = TaskOutput(transcript.text, note(transcript, task, task_pair,
                                                                 transcript.timings["decode_s"]))
        return shown


def note(transcript, task: str, pair: RatePair, seconds: float) -> str:
    """The line under a transcript: confidence, score, flags (a loop cut, nothing to transcribe,
    ...), rates and time (the browser test rebuilds it to compare)."""
    found = score_of(transcript)
    flags = sorted({f.replace("_", " ") for s in transcript.segments for f in s.flags})
    head = "not decoded" if found is None else f"confidence {found[1]:.2f} · score {found[0]:.3f}"
    return (f"{head}{''.join(f' · {f}' for f in flags)} · rates {scale_name(task, pair)} "
            f"({tokens_per_second(task, pair):g} LLM tokens/s) · decoded in {seconds:.2f} s")


def import_gradio():
    """gradio, with its analytics and version check off (set before the import reads them)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gradio
    except ImportError:
        raise AvsrError("the demo needs gradio: pip install avsr[demo]") from None
    return gradio


def build_page(demo: Demo, gr, examples: list[Example], title: str):
    """The page: input and rate choice on the left, mouth crops and the three transcripts on the right."""
    with gr.Blocks(title="avsr demo", analytics_enabled=False) as page:
        gr.Markdown(f"## avsr demo\n{title}")
        if demo.knowledge:
            gr.Markdown(f"**What this model knows:** {demo.knowledge}.", elem_id="knowledge")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                video = gr.Video(label="video (with a face and sound)", sources=["upload"], height=300,
                                 elem_id="video")
                choices = [(demo.rate_label(k), k) for k in demo.rate_choices]
                rates = gr.Dropdown(choices, value=choices[0][1], label="compression rates (elastic model)",
                                    info="fewer LLM tokens per second: faster, usually less accurate",
                                    visible=len(choices) > 1, elem_id="rates")
                button = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
                if examples:
                    gr.Examples([[str(e.path)] for e in examples], inputs=[video], label="examples",
                                example_labels=[e.label for e in examples], elem_id="examples")
            with gr.Column(scale=2):
                roi = gr.Image(label=f"mouth crops the model reads (96x96 gray, 25 fps; {PREVIEW_FRAMES} of them)",
                               interactive=False, elem_id="roi", height=140,
                               buttons=["download", "fullscreen"])
                about = gr.Markdown(elem_id="about")
                outputs = [roi, about]
                with gr.Row():
                    for task in TASKS:
                        with gr.Column(min_width=200):
                            reads = " + ".join(MODALITIES[task])
                            outputs.append(gr.Textbox(label=f"{task.upper()} ({reads})", lines=3, interactive=False,
                                                      elem_id=f"{task}-text"))
                            outputs.append(gr.Markdown(elem_id=f"{task}-note"))

        def transcribe(path, rate):
            try:
                if not path:
                    raise AvsrError("upload a video or pick an example first")
                shown = demo.run(path, rate)
            except AvsrError as err:  # shown on the page, one log line; gradio would print a traceback
                raise gr.Error(demo.rejected(path, err), print_exception=False) from None
            return [shown.roi, shown.about,
                    *(part for task in TASKS for part in (shown.tasks[task].text, shown.tasks[task].note))]

        # One request at a time: the one model is not meant to decode in two threads at once.
        button.click(transcribe, [video, rates], outputs, api_name="transcribe", concurrency_limit=1)
    return page


def check_port(port: int) -> None:
    """A busy or impossible port is refused before the model loads, in gradio's stead (address
    reuse on, as the server's: a port a stopped demo just left is free)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except (OSError, OverflowError) as err:
            raise AvsrError(f"--port {port}: cannot listen there on {HOST} "
                            f"({getattr(err, 'strerror', None) or err}); choose another") from None


@contextlib.contextmanager
def started(checkpoint: str | Path, port: int = 7860, examples: str | Path | None = None,
            num_beams: int = 4) -> Iterator[str]:
    """Serve the demo on http://127.0.0.1:PORT while in the block; yields the URL.

    Everything that can be wrong (checkpoint, examples folder, gradio, the backbones) is
    refused before the server starts."""
    from avsr.transcription import Transcriber

    transcriber = Transcriber(checkpoint, num_beams=num_beams)  # the checkpoint checked, not yet loaded
    check_port(port)
    chosen = folder_examples(examples) if examples is not None else None
    gr = import_gradio()
    demo = Demo(transcriber)
    with tempfile.TemporaryDirectory(prefix="avsr-demo-") as tmp:
        shown = chosen if chosen is not None else corpus_examples(transcriber.opened, Path(tmp))
        title = (f"checkpoint `{checkpoint}` · tasks {', '.join(demo.tasks)} · beam search {num_beams}. "
                 "Upload a video (any format FFmpeg reads): the mouth is found with MediaPipe's face mesh and "
                 "cropped to 96x96 gray at 25 fps (a 96x96 video is taken as mouth crops already), the sound "
                 "resampled to 16 kHz mono.")
        page = build_page(demo, gr, shown, title)
        try:
            _, url, _ = page.launch(server_name=HOST, server_port=port, share=False, prevent_thread_lock=True,
                                    inbrowser=False, ssr_mode=False, pwa=False, mcp_server=False,
                                    enable_monitoring=False, quiet=True, footer_links=[], show_error=True)
        except OSError as err:  # taken since check_port
            raise AvsrError(f"--port {port}: {err}") from None
        try:
            yield url
        finally:
            page.close()


def serve(checkpoint: str | Path, port: int = 7860, examples: str | Path | None = None, num_beams: int = 4) -> None:
    """`avsr demo`: serve until Ctrl-C."""
    import time

    with started(checkpoint, port, examples, num_beams) as url:
        print(f"avsr demo: {url} (local only; Ctrl-C stops it)", flush=True)
        while True:
            time.sleep(3600)
