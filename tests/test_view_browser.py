"""The workbench in a real browser: headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright) on a run root the tests write with the stages' own schemas and writers
(tests/fakes/run_root.py), served by `themis view` as a user starts it, and as a static export
opened from disk. Screenshots of each section go under the test's tmp folder (paths printed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from themis import cli
from themis.view.data import SECTIONS, open_run

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no browser at {CHROMIUM}: apt-get install chromium (CI's .ci/run installs it)"
)
ROOT = Path(__file__).resolve().parents[1]
TABLE = '[data-table="judgments"]'


@pytest.fixture(scope="module")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fakes.run_root import build_run_root

    return build_run_root(tmp_path_factory.mktemp("runs"), judgments=300)


@pytest.fixture(scope="module")
def served(run_root: Path):
    """`themis view RUN_ROOT --port 0 --no-browser` in its own process; yields its address."""
    cmd = [sys.executable, "-m", "themis.cli", "view", str(run_root), "--port", "0", "--no-browser"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = server.stdout.readline()
    match = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
    if not match:
        server.kill()
        pytest.fail(f"themis view did not start: {line!r} {server.stderr.read()}")
    yield match.group(1)
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page; a JavaScript error on it fails the test."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.close()
    assert errors == []


@pytest.fixture(scope="module")
def screens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screens")


def open_section(page, base: str, name: str, status: str = "ok") -> None:
    page.goto(f"{base}#{name}")
    page.wait_for_selector(f'#section-{name}[data-status="{status}"]', timeout=30_000)


def wait_table(page, selector: str, total: int) -> None:
    page.wait_for_function(
        "([sel, n]) => { const t = document.querySelector(sel); return t && t.dataset.state === 'ready' "
        "&& t.dataset.total === String(n); }",
        arg=[selector, total],
        timeout=30_000,
    )


def shoot(page, screens: Path, name: str) -> Path:
    path = screens / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def check_every_section(page, base: str, run_root: Path, screens: Path, prefix: str) -> list[Path]:
    view = open_run(str(run_root))
    shots = []
    for name in SECTIONS:
        open_section(page, base, name)
        if name == "run":
            assert page.locator("[data-stage]").count() == 7
        elif name == "judgments":
            assert page.locator("#score-charts svg").count() == len(view.section("judgments")["scores"])
            total = len(view.table("judgments").rows)
            wait_table(page, TABLE, total)
            assert page.locator(f"{TABLE} tbody tr.row").count() == min(50, total)  # one page in the DOM
        elif name == "dataset":
            ifd = view.section("dataset")["ifd"]  # None where selection scored no IFD (the tiny pipeline)
            assert page.locator("#ifd-charts svg").count() == (len(ifd["scenarios"]) if ifd else 0)
            wait_table(page, '[data-table="dataset-records"]', len(view.table("dataset-records").rows))
        elif name == "training":
            charts = view.section("training")["charts"]
            lines = sum(len(points) > 1 for chart in charts.values() for points in chart.values())
            assert page.locator("#training-charts svg path[data-series]").count() == lines >= 4  # losses, lr, tokens/s
        elif name == "evaluation":
            report = view.section("evaluation")["reports"][0]
            wait_table(page, f'[data-table="{report["table"]}"]', len(view.table(report["table"]).rows))
            page.wait_for_function("() => [...document.querySelectorAll('img.plot')].every(i => i.naturalWidth > 0)")
            assert page.locator("img.plot").count() == len(report["images"]) > 0
        elif name == "compare":
            page.wait_for_selector('#compare-result[data-state="ready"] table')
            assert "paired bootstrap" in page.inner_text("#compare-result")
        shots.append(shoot(page, screens, f"{prefix}-{name}"))
    return shots


def test_every_section_renders(page, served: str, run_root: Path, screens: Path) -> None:
    check_every_section(page, served, run_root, screens, "served")


@pytest.mark.slow
@pytest.mark.integration
def test_every_section_of_a_real_pipeline_run(page, ray_local, tiny_model_dir: Path, tmp_path: Path, screens: Path):
    """The six stages before serve on local Ray with the tiny model (two judges, so that Compare has
    two reports), then the workbench on the run root they wrote."""
    from tests.test_pipeline import tiny_config
    from themis import runner
    from themis.view.server import build_server, url_of

    judges = "evaluate.judges=[{kind: trained}, {kind: engine, name: teacher, engine: local}]"
    cfg = tiny_config(
        tiny_model_dir, tmp_path, "stages=[instructions,responses,judgments,dataset,train,evaluate]", judges
    )
    runner.run_pipeline(cfg)
    run_root = tmp_path / cfg.run.name
    server = build_server(open_run(str(run_root)), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_every_section(page, url_of(server), run_root, screens, "pipeline")
    finally:
        server.shutdown()
        server.server_close()


def test_a_filter_narrows_the_table_and_a_click_opens_the_item(page, served: str, run_root: Path) -> None:
    table = open_run(str(run_root)).table("judgments")
    open_section(page, served, "judgments")
    wait_table(page, TABLE, 300)
    page.select_option(f'{TABLE} select[data-filter="status"]', "unparsable")
    unparsable = table.page({"status": "unparsable"})["total"]
    wait_table(page, TABLE, unparsable)
    statuses = page.locator(f"{TABLE} tbody tr.row td:nth-child(5)").all_inner_texts()
    assert len(statuses) == unparsable > 0 and set(statuses) == {"unparsable"}
    page.select_option(f'{TABLE} select[data-filter="status"]', "")
    page.select_option(f'{TABLE} select[data-filter="orders"]', "orders disagree")
    wait_table(page, TABLE, table.page({"orders": "orders disagree"})["total"])
    first = page.locator(f"{TABLE} tbody tr.row").first
    row = int(first.get_attribute("data-row"))
    first.click()
    page.wait_for_selector(f'#drawer:not([hidden])[data-row="{row}"] dl.record')
    drawer = page.inner_text("#drawer")
    record = table.record(row)
    assert record["instruction"] in drawer and record["rationale"].splitlines()[0] in drawer
    assert "Response A (as shown)" in drawer and "messages (the prompt as the judge saw it)" in drawer
    page.click("#drawer a.reason")  # the same pair in the other order
    page.wait_for_selector(f'#drawer[data-row="{record["other_order"]["row"]}"] dl.record')


def test_a_reject_reason_lists_its_rows(page, served: str, run_root: Path) -> None:
    rejects = open_run(str(run_root)).table("rejects-dataset")
    reason = "pair orders disagree (position bias)"
    open_section(page, served, "run")
    page.click(f'[data-reason="{reason}"]')
    wait_table(page, '#rejects-panel [data-table="rejects-dataset"]', rejects.page({"reason": reason})["total"])
    reasons = page.locator("#rejects-panel tbody tr.row td:first-child").all_inner_texts()
    assert reasons and set(reasons) == {reason}


def test_the_static_export_opens_from_disk(page, run_root: Path, tmp_path: Path, screens: Path, capsys) -> None:
    out = tmp_path / "export"
    assert cli.main(["view", str(run_root), "--out", str(out)]) == 0
    assert "open " in capsys.readouterr().out
    base = (out / "index.html").as_uri()
    shots = check_every_section(page, base, run_root, screens, "static")
    with capsys.disabled():
        print("".join(f"\nscreenshot: {path}" for path in shots))
    open_section(page, base, "judgments")
    wait_table(page, TABLE, 300)
    table = open_run(str(run_root)).table("judgments")
    page.select_option(f'{TABLE} select[data-filter="kind"]', "pairwise")
    page.select_option(f'{TABLE} select[data-filter="orders"]', "orders disagree")
    wait_table(page, TABLE, table.page({"kind": "pairwise", "orders": "orders disagree"})["total"])
    page.locator(f"{TABLE} tbody tr.row").nth(1).click()
    page.wait_for_selector("#drawer:not([hidden]) dl.record")
    assert "pairwise" in page.inner_text("#drawer")
    # A second export replaces the first; a folder that holds anything else is refused.
    assert cli.main(["view", str(run_root), "--out", str(out)]) == 0
    assert cli.main(["view", str(run_root), "--out", str(run_root)]) == 1
    assert "is not empty and holds no earlier export" in capsys.readouterr().err


def test_a_broken_run_shows_what_is_missing(page, run_root: Path, tmp_path: Path, screens: Path) -> None:
    from themis.view.server import build_server, url_of

    copy = tmp_path / "runs" / "view"
    shutil.copytree(run_root, copy)
    shutil.rmtree(copy / "reports")
    (copy / "judgments/data.parquet").unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["stages"].pop("evaluate")
    manifest["stages"]["judgments"] |= {"status": "running", "attempt": str(copy / "_attempts/judgments-x")}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    server = build_server(open_run(str(copy)), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = url_of(server)
        open_section(page, base, "evaluation", "missing")
        assert "evaluate stage has not run" in page.inner_text("#section-evaluation .missing")
        open_section(page, base, "judgments")  # the rejected judgments are still there to read
        assert "'running'" in page.inner_text("#section-judgments .warning")
        open_section(page, base, "run")
        assert "never published" in page.inner_text("#section-run")
        shoot(page, screens, "broken-run")
    finally:
        server.shutdown()
        server.server_close()


def test_the_server_refuses_other_hosts_and_bad_requests(served: str) -> None:
    request = urllib.request.Request(served + "api/section/run", headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(served + "api/table/judgments/page?colour=red", timeout=10)
    assert bad.value.code == 400 and "no filter 'colour'" in json.loads(bad.value.read())["error"]
    for path in ("files/manifest.json", "files/../manifest.json", "api/table/nothing/meta"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(served + path, timeout=10)
        assert err.value.code in (400, 404), path


def test_themis_view_on_a_folder_that_is_not_a_run_root(tmp_path: Path, capsys) -> None:
    assert cli.main(["view", str(tmp_path), "--no-browser"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("themis: error: not a run root: ") and "no manifest.json" in err
    assert cli.main(["view", str(tmp_path / "absent"), "--no-browser"]) == 1
    assert "not found" in capsys.readouterr().err
