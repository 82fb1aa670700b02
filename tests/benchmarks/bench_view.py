"""Speed of the workbench at the paper's scale: `make bench-view` (or `python tests/benchmarks/bench_view.py`).

Builds a synthetic run root with 15,000 teacher judgments (tests/fakes/run_root.py: the stages'
schemas and writers), starts `themis view RUN_ROOT --port 0 --no-browser` as a user would, and in
headless Chromium (Debian's /usr/bin/chromium, driven by Playwright):

- open_ms: from navigating to `#judgments` to the first page of the judgments table on screen, on a
  cold server (the first request reads the table);
- filter_ms: from choosing "parse status: unparsable" to the filtered rows on screen; then a second
  filter on top (pairs whose orders disagree) and a click that opens a row;
- the same against the static export (`--out`), opened from file:// with no server.

The target: open and filter each under 1,000 ms. Prints, never asserts; ends with
`RESULT open_ms=... filter_ms=...` (and the other figures after them).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fakes.run_root import build_run_root  # noqa: E402
from themis.view.data import open_run  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
JUDGMENTS = 15_000
TABLE = '[data-table="judgments"]'


def main() -> None:
    if not Path(CHROMIUM).exists():
        sys.exit(f"bench-view needs {CHROMIUM} (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="bench-view-"))
    start = time.perf_counter()
    run_root = build_run_root(work / "runs", judgments=JUDGMENTS, plots=False)
    print(f"built a run root with {JUDGMENTS:,} judgments in {time.perf_counter() - start:.1f} s: {run_root}")
    expected = expected_counts(run_root)
    server, url = start_server(run_root)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            served = measure(browser, url + "#judgments", expected, "served")
            out = work / "export"
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "themis.cli", "view", str(run_root), "--out", str(out)], check=True, cwd=ROOT
            )
            export_s = time.perf_counter() - start
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
            print(f"static export: {export_s:.1f} s, {size:.1f} MB")
            static = measure(browser, (out / "index.html").as_uri() + "#judgments", expected, "static")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(
        f"RESULT open_ms={served['open']:.0f} filter_ms={served['filter']:.0f} filter2_ms={served['filter2']:.0f} "
        f"row_ms={served['row']:.0f} static_open_ms={static['open']:.0f} static_filter_ms={static['filter']:.0f} "
        f"static_row_ms={static['row']:.0f} export_s={export_s:.1f} judgments={JUDGMENTS}"
    )


def expected_counts(run_root: Path) -> dict[str, int]:
    """What the filters must show, from the data layer (so a wrong page cannot pass for a fast one)."""
    table = open_run(str(run_root)).table("judgments")
    return {
        "all": len(table.rows),
        "unparsable": table.page({"status": "unparsable"})["total"],
        "both": table.page({"status": "parsed", "orders": "orders disagree"})["total"],
    }


def start_server(run_root: Path) -> tuple[subprocess.Popen, str]:
    """`themis view` in its own process, as a user starts it; returns it and its address."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "themis.cli", "view", str(run_root), "--port", "0", "--no-browser"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    line = server.stdout.readline()
    match = re.search(r"at (http://\S+/)", line)
    if not match:
        server.kill()
        sys.exit(f"themis view did not start: {line!r}")
    return server, match.group(1)


def measure(browser, url: str, expected: dict[str, int], label: str) -> dict[str, float]:
    """Milliseconds to open the judgments table, filter it twice and open a row."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    out = {}
    start = time.perf_counter()
    page.goto(url)
    wait_total(page, expected["all"])
    out["open"] = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    page.select_option(f'{TABLE} select[data-filter="status"]', "unparsable")
    wait_total(page, expected["unparsable"])
    out["filter"] = (time.perf_counter() - start) * 1000
    page.select_option(f'{TABLE} select[data-filter="status"]', "parsed")
    start = time.perf_counter()
    page.select_option(f'{TABLE} select[data-filter="orders"]', "orders disagree")
    wait_total(page, expected["both"])
    out["filter2"] = (time.perf_counter() - start) * 1000
    rows = page.locator(f"{TABLE} tbody tr.row").count()
    start = time.perf_counter()
    page.locator(f"{TABLE} tbody tr.row").first.click()
    page.wait_for_selector("#drawer:not([hidden]) dl.record")
    out["row"] = (time.perf_counter() - start) * 1000
    print(
        f"{label}: open {out['open']:.0f} ms ({expected['all']:,} rows, {rows} in the DOM), "
        f"filter {out['filter']:.0f} ms ({expected['unparsable']} unparsable), second filter "
        f"{out['filter2']:.0f} ms ({expected['both']} rows of pairs whose orders disagree), "
        f"open a row {out['row']:.0f} ms"
    )
    page.close()
    return out


def wait_total(page, total: int) -> None:
    page.wait_for_function(
        "([sel, n]) => { const t = document.querySelector(sel); return t && t.dataset.state === 'ready' "
        "&& t.dataset.total === String(n) && t.querySelector('tbody tr.row'); }",
        arg=[TABLE, total],
        timeout=60_000,
    )


if __name__ == "__main__":
    main()
