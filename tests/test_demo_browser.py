"""`avsr demo` end to end: the page served on 127.0.0.1 with the tiny trained checkpoint, driven
in headless Chromium (upload, Transcribe, read the three columns), must show what
`Transcriber` gives for the same file; plus the page's handler without a browser, and the
refusals that come before any server starts."""

import socket
from pathlib import Path

import pytest
from conftest import run_cli, tiny_train_args

from avsr.data.manifests import read_manifest
from avsr.demo.app import Demo, note, started
from avsr.demo.browser import CHROMEDRIVER, CHROMIUM
from avsr.demo.examples import mux
from avsr.models.tasks import TASKS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tiny_run) -> Path:
    return tiny_run / "checkpoints" / "last"


@pytest.fixture(scope="module")
def transcriber(checkpoint):
    from avsr.transcription import Transcriber

    return Transcriber(checkpoint, num_beams=4)


@pytest.fixture(scope="module")
def upload(tiny_corpus, tmp_path_factory) -> tuple[Path, str]:
    """(a test utterance as one mp4 with sound, as a user would upload it, its reference text)."""
    root = Path(tiny_corpus[0].out)
    row = read_manifest(root / "labels" / "synth_test.csv", root=root)[0]
    path = tmp_path_factory.mktemp("upload") / "clip.mp4"
    mux(row.video, row.audio, path)
    return path, row.text


@pytest.fixture(scope="module")
def want(transcriber, upload) -> dict[str, tuple[str, str]]:
    """{task: (transcript, note up to the timing)} as Transcriber gives them for the upload."""
    out = {}
    for task in TASKS:
        (t,) = transcriber.transcribe([upload[0]], task=task)
        out[task] = (t.text, note(t, task, transcriber.model.default_pair(task), 0.0).rsplit(" · ", 1)[0])
    return out


def test_the_handler_shows_what_the_transcriber_gives(transcriber, upload, want):
    demo = Demo(transcriber)
    assert demo.knowledge == transcriber.knowledge and "GRID commands" in demo.knowledge  # said on the page
    shown = demo.run(upload[0])
    assert shown.roi is not None and shown.roi.shape[0] == 96 and "face in" in shown.about
    for task in TASKS:
        assert shown.tasks[task].text == want[task][0]
        assert shown.tasks[task].note.startswith(want[task][1] + " · "), shown.tasks[task].note


@pytest.fixture(scope="module")
def elastic_checkpoint(tiny_corpus, tiny_backbones, tmp_path_factory) -> Path:
    """A 2-step Matryoshka training: audio rates 4 and 8, video rates 2 and 4."""
    out = tmp_path_factory.mktemp("elastic") / "run"
    code, _, err = run_cli("train", "--quiet", *tiny_train_args(tiny_corpus[0].out, tiny_backbones, out, 2,
                                                                "model.audio_rates=[4,8]", "model.video_rates=[2,4]"))
    assert code == 0, err
    return out / "checkpoints" / "last"


@pytest.fixture(scope="module")
def elastic(elastic_checkpoint, upload):
    """(Transcriber of the elastic checkpoint, {task: (transcript, note up to the timing)} of the
    upload at audio rate 8, video rate 4)."""
    from avsr.transcription import Transcriber

    transcriber = Transcriber(elastic_checkpoint, num_beams=2)
    out = {}
    for task in TASKS:
        (t,) = transcriber.transcribe([upload[0]], task=task, rates=(8, 4))
        pair = transcriber.model.check_pair(task, (8, 4))
        out[task] = (t.text, note(t, task, pair, 0.0).rsplit(" · ", 1)[0])
    return transcriber, out


def test_the_rate_choice_of_an_elastic_model_decodes_at_that_pair(elastic, upload):
    transcriber, want = elastic
    demo = Demo(transcriber)
    assert list(demo.rate_choices) == ["4,2", "4,4", "8,2", "8,4"]
    assert demo.rate_label("8,4") == "audio ÷8, video ÷4"
    shown = demo.run(upload[0], "8,4")
    for task in TASKS:
        assert shown.tasks[task].text == want[task][0]
        assert shown.tasks[task].note.startswith(want[task][1] + " · "), shown.tasks[task].note


def test_a_wrong_checkpoint_is_refused_before_any_server(tmp_path):
    code, _, err = run_cli("demo", "--checkpoint", tmp_path, "--port", free_port())
    assert code == 2 and err.count("\n") == 1 and "is not an avsr checkpoint folder" in err, err


def test_a_busy_port_is_refused_before_the_model_loads(checkpoint):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = run_cli("demo", "--checkpoint", checkpoint, "--port", busy.getsockname()[1])
    assert code == 2 and "Address already in use" in err, err


def test_an_examples_folder_without_videos_is_refused(checkpoint, tmp_path):
    code, _, err = run_cli("demo", "--checkpoint", checkpoint, "--examples", tmp_path)
    assert code == 2 and "no video files" in err, err


def test_a_rejected_upload_is_one_log_line_and_its_reason_on_the_page(checkpoint, tmp_path, capfd):
    """Through the served page's API (gradio's own client, on 127.0.0.1): the caller gets the
    reason, the server's stderr one line per rejected input and no traceback."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with started(checkpoint, free_port()) as url:
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="cannot read junk.mp4 as audio or video"):
            client.predict(handle_file(junk), "4,2", api_name="/transcribe")
        with pytest.raises(AppError, match="upload a video or pick an example first"):
            client.predict(None, "4,2", api_name="/transcribe")
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    rejected = [line for line in err.splitlines() if line.startswith("avsr demo: rejected")]
    assert len(rejected) == 2, err
    assert rejected[0].startswith("avsr demo: rejected junk.mp4: cannot read junk.mp4 as audio or video"), err
    assert rejected[1] == "avsr demo: rejected (no video): upload a video or pick an example first"


needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason=f"the browser tests need Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}; "
           "scripts/setup.sh installs them)")


@needs_chromium
def test_the_page_in_chromium_shows_the_transcriber_s_three_transcripts(checkpoint, upload, want, tmp_path):
    from selenium.webdriver.common.by import By

    from avsr.demo.browser import chromium, outside_requests, transcribe_on_page

    with started(checkpoint, free_port()) as url:
        assert url.startswith("http://127.0.0.1:")
        driver = chromium()
        try:
            shown = transcribe_on_page(driver, url, video=upload[0])
            assert not any(e.is_displayed() for e in driver.find_elements(By.CSS_SELECTOR, "#rates"))  # one pair
            assert driver.find_element(By.CSS_SELECTOR, "#roi img").get_attribute("src")
            driver.save_screenshot(str(tmp_path / "demo.png"))
            knowledge = driver.find_element(By.CSS_SELECTOR, "#knowledge").text
            assert "synthetic corpus" in knowledge and "whatever it hears" in knowledge, knowledge
            # The examples are the checkpoint's corpus test utterances, labelled with their reference;
            # this one is the uploaded utterance muxed the same way: the same transcripts.
            picked = transcribe_on_page(driver, url, example=f"mouth crop · {upload[1]}")
            assert outside_requests(driver) == []
        finally:
            driver.quit()
    for task in TASKS:
        for page in (shown, picked):
            assert page[task][0] == want[task][0], task
            assert page[task][1].startswith(want[task][1] + " · "), page[task][1]
    assert (tmp_path / "demo.png").stat().st_size > 10_000


@needs_chromium
def test_the_page_s_rate_selector_decodes_an_elastic_model_at_the_chosen_pair(elastic_checkpoint, elastic, upload):
    from avsr.demo.browser import chromium, transcribe_on_page

    with started(elastic_checkpoint, free_port(), num_beams=2) as url:
        driver = chromium()
        try:
            shown = transcribe_on_page(driver, url, video=upload[0], rates="audio ÷8, video ÷4")
        finally:
            driver.quit()
    for task in TASKS:
        assert shown[task][0] == elastic[1][task][0], task
        assert shown[task][1].startswith(elastic[1][task][1] + " · "), shown[task][1]
