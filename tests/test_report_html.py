"""`pocketformer report DIR`: one self-contained HTML page (images inlined) and its Markdown twin, from the
report.json files, bench JSON and tune results of a run; checked for rendering in headless Chromium."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sdk.cli.app import EXIT_BAD_INPUT, EXIT_OK, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(export_tiny, tmp_path_factory):
    """A run folder as a user would have it: exports (with report.json), a bench JSON, a tune result."""
    root = tmp_path_factory.mktemp("run")
    artifacts = []
    for fmt in ("pte", "onnx"):
        result = export_tiny("mobilevit_xxs", fmt, "fp32")
        target = root / fmt / result.model / result.precision
        shutil.copytree(result.path.parent, target)
        artifacts.append(target / result.path.name)
    assert main(["bench", *map(str, artifacts), "--runs", "5", "--warmup", "1", "--threads", "1",
                 "--profile-runs", "3", "--json", str(root / "bench.json"), "--quiet"]) == EXIT_OK
    assert main(["tune", "mobilevit_xxs", "--tiny", "--formats", "onnx", "--precisions", "fp32", "--out",
                 str(root / "tune"), "--runs", "5", "--warmup", "1", "--threads", "1", "--quiet"]) == EXIT_OK
    assert main(["report", str(root)]) == EXIT_OK
    return root


def _images(page: str) -> list[str]:
    return re.findall(r"<img [^>]*src='([^']+)'", page)


def test_html_is_self_contained_with_four_plots(run_dir):
    page = (run_dir / "report.html").read_text()
    assert not re.search(r"(src|href)=['\"]?https?:", page) and "<link" not in page and "<script" not in page
    sources = _images(page)
    assert len(sources) == 4  # latency, FLOPs vs latency, size vs accuracy loss, slowest artifact's profile
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(PNG_MAGIC) and len(png) > 5000
    for heading in ("Latency per model × format × precision", "FLOPs vs measured latency", "Size vs accuracy loss",
                    "Where the slowest artifact spends its time", "Pick for mobilevit_xxs-tiny", "Artifacts"):
        assert heading in page
    for cell in ("mobilevit_xxs-tiny", "<td>pte</td>", "<td>onnx</td>", "<td>fp32</td>", "executorch", "onnxruntime"):
        assert cell in page
    assert "PyTorch eager in the same rounds" in page and "<td>pytorch</td>" in page  # the reference row


def test_flops_come_from_the_analysis_and_the_pick_is_linked(run_dir):
    analysis = json.loads((run_dir / "analysis.json").read_text())
    assert analysis["mobilevit_xxs-tiny"]["flops"] > 0
    page = (run_dir / "report.html").read_text()
    link = re.search(r"Fastest verified artifact of mobilevit_xxs-tiny: <b>onnx fp32</b>.*?href='([^']+)'", page)
    picked = (run_dir / "tune/mobilevit_xxs-tiny/fp32/model.onnx").resolve()
    assert link and (run_dir / link.group(1)).resolve() == picked
    assert re.search(r"GOP/s: \d+% of this CPU(&#x27;|')s peak", page)  # the pick against the roofline


def test_slowest_artifact_profile_is_shown(run_dir):
    from sdk.report.html_page import collect

    rows = [r for r in collect(run_dir)["latency"] if not r.get("reference")]
    slowest = max(rows, key=lambda r: r["latency"]["p50"])
    page = (run_dir / "report.html").read_text()
    section = page.split("Where the slowest artifact spends its time", 1)[1].split("<h2>", 1)[0]
    # Its profile (recorded by `bench --profile-runs`, or taken by the report), with the runtime's node names.
    assert "profile" in section and "rows explain" in section
    provider = {"pte": "XnnpackBackend", "onnx": "CPUExecutionProvider"}[slowest["format"]]
    assert f"<td>{provider}</td>" in section


def test_markdown_twin(run_dir):
    md = (run_dir / "report.md").read_text()
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert len(images) == 4 and all((run_dir / i).read_bytes().startswith(PNG_MAGIC) for i in images)
    assert "| model | format | precision |" in md and "## Pick for mobilevit_xxs-tiny" in md
    from device_runtime.cpu import read_cpuinfo  # the latency table's machine line: the CPU each bench ran on

    assert f"Measured on: local: {read_cpuinfo().model} (" in md


def test_report_of_an_empty_folder_says_so(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "nothing to report" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


PROBE = ("<script>window.addEventListener('load',()=>{document.body.setAttribute('data-images',JSON.stringify("
         "[...document.images].map(i=>[i.complete,i.naturalWidth,i.naturalHeight])));});</script>")


def _rendered_images(html_file: Path, profile: Path) -> list[list]:
    browser = _chromium()
    probe = html_file.with_name(html_file.stem + "_probe.html")
    probe.write_text(html_file.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    match = re.search(r'data-images="([^"]*)"', result.stdout)
    assert match, f"no probe result from {browser}: {result.stderr[-500:]}"
    return json.loads(match.group(1).replace("&quot;", '"'))


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (Debian: apt-get install chromium; "
                                                "installed by .ci/run)")
def test_page_renders_its_images_in_headless_chromium(run_dir, tmp_path):
    images = _rendered_images(run_dir / "report.html", tmp_path / "profile")
    assert len(images) == 4
    assert all(complete and width > 300 and height > 200 for complete, width, height in images), images
    # The check can fail: a page with a corrupt image is caught.
    broken = tmp_path / "broken.html"
    page = (run_dir / "report.html").read_text()
    broken.write_text(page.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1))
    images = _rendered_images(broken, tmp_path / "profile2")
    assert sum(1 for _, width, _ in images if width == 0) == 1
