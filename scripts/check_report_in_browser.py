"""Open a lowbit HTML report in a real headless browser and check that it renders.

    python scripts/check_report_in_browser.py [REPORT.html] [--out shot.png]

Without a report, one is made from a small synthetic model (Embedding + 2 Linear, int4
weights) with ``lowbit.analysis.debug``. The page is rendered offline by headless Chromium
(``apt-get install -y chromium``, or set ``CHROMIUM=/path/to/chrome``) into a PNG
screenshot, which must be non-blank: many distinct colours, not one background colour.
Network access is disabled for the browser (``--proxy-server`` to nowhere) so a page that
needed anything from outside would show broken images. Exit status 0 = rendered.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def _browser() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    sys.exit("no headless browser found: apt-get install -y chromium (or set CHROMIUM)")


def _demo_report(path: Path) -> None:
    import torch

    from lowbit.analysis import debug
    from lowbit.recipes import Recipe, Rule

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 128), torch.nn.Linear(128, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 128)).eval()
    with torch.no_grad():
        model[3].weight[:, 7] *= 40
    recipe = Recipe((Rule(types=("Linear",), weight="int4:channel", act="int8:token"),
                     Rule(types=("Embedding",), weight="int8:channel")), name="demo")
    data = [torch.randint(0, 50, (4, 8)) for _ in range(3)]
    debug(model, recipe, data).to_html(path)


def render(html: Path, png: Path, width: int = 1400, height: int = 2400) -> None:
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           f"--window-size={width},{height}", f"--screenshot={png}", html.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def check(png: Path) -> dict:
    """Colour statistics of the screenshot; raises SystemExit when it looks blank."""
    from PIL import Image

    img = Image.open(png).convert("RGB")
    small = img.resize((img.width // 4, img.height // 4))
    raw = small.tobytes()
    colours = len({raw[i:i + 3] for i in range(0, len(raw), 3)})
    extrema = img.getextrema()
    stats = {"size": img.size, "distinct_colours": colours, "extrema": extrema}
    if colours < 50 or all(lo == hi for lo, hi in extrema):
        sys.exit(f"screenshot {png} looks blank: {stats}")
    return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", nargs="?", help="HTML report (default: make a demo one)")
    ap.add_argument("--out", default=None, help="screenshot path (default: a temp file)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lowbit-report-"))
    html = Path(args.report) if args.report else tmp / "report.html"
    if not args.report:
        _demo_report(html)
    png = Path(args.out) if args.out else tmp / "screenshot.png"
    render(html, png)
    print(f"rendered {html} -> {png}: {check(png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
