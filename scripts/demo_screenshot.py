"""The screenshot in docs/demo.md: serve `avsr demo` for a checkpoint, transcribe one video in
headless Chromium, and save the whole page.

    python scripts/demo_screenshot.py --checkpoint runs/quickstart/avsr/checkpoints/last
                                      [--video FILE | --example N] [--rates LABEL] [--out docs/demo.png]

Default input: the first example (a talking face where `avsr synth-faces` made them, else a
mouth-crop clip of the checkpoint's corpus). Prints the three transcripts it shows.
"""

from __future__ import annotations

import argparse
import socket
import time

from avsr.demo.app import started
from avsr.demo.browser import chromium, outside_requests, transcribe_on_page


def fit_page(driver, width: int) -> None:
    """Grow the window until the whole page shows without a scroll bar (the page settles after
    the outputs arrive, so measure until two measurements agree)."""
    seen = None
    for _ in range(10):
        inner, content, outer = driver.execute_script(
            "return [window.innerHeight, document.documentElement.scrollHeight, window.outerHeight]")
        if content <= inner and content == seen:
            return
        seen = content
        driver.set_window_size(width, content + outer - inner)
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--video", help="a video file to upload")
    source.add_argument("--example", type=int, default=0, help="which example to click (default: %(default)s)")
    parser.add_argument("--rates", help="an option of the rate selector, as shown (e.g. 'audio ÷16, video ÷5')")
    parser.add_argument("--out", default="docs/demo.png")
    parser.add_argument("--width", type=int, default=1400, help="window width in CSS pixels (default: %(default)s)")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with started(args.checkpoint, port) as url:
        driver = chromium(args.width, 900)
        try:
            shown = transcribe_on_page(driver, url, video=args.video, example=None if args.video else args.example,
                                       rates=args.rates)
            fit_page(driver, args.width)
            driver.save_screenshot(args.out)
            outside = outside_requests(driver)
        finally:
            driver.quit()
    for task, (text, line) in shown.items():
        print(f"{task.upper():5} {text!r}  ({line})")
    if outside:
        print("requests outside 127.0.0.1:", *outside)
    print(f"screenshot: {args.out}")


if __name__ == "__main__":
    main()
