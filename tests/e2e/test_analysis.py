"""`report` and `dashboard` on the real study `made` (conftest) made by the tool on tiny data;
`ablate` is in test_ablate_cli.py."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from study.figures import normalize_rows

from conftest import ROOT, repo_env, run_cli, storage_of

pytestmark = pytest.mark.slow  # every test here reads the study `made` trains


def test_report_writes_tables_and_figures_matching_the_storage(made):
    root, _, _ = made
    result = run_cli("report", "abl", cwd=root)
    assert result.returncode == 0, result.stderr
    out = root / "results" / "abl"
    assert result.stdout.strip() == str(Path("results") / "abl" / "report.md")
    for name in (
        "factors.md",
        "factors.csv",
        "factors.tex",
        "cells.csv",
        "curves.png",
        "history.png",
        "confusion_best.png",
        "report.md",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("ablation.*"))  # "ablation" names only ablate's table
    assert len(list(out.glob("confusion_*.png"))) >= 3  # best + arch x pretrained cells

    study = optuna.load_study(study_name="abl", storage=storage_of(root))
    table = pd.read_csv(out / "factors.csv")
    for factor in ("arch", "loss", "pretrained"):
        for level, row in table[table.factor == factor].set_index("level").iterrows():
            members = [t for t in study.trials if str(t.params.get(factor)) == str(level)]
            complete = [t.value for t in members if t.state == TrialState.COMPLETE]
            assert row.n == len(complete)
            assert row.pruned == sum(t.state == TrialState.PRUNED for t in members)
            if complete:
                assert row.best == pytest.approx(max(complete))
                assert row["mean"] == pytest.approx(np.mean(complete))
    assert table[table.factor == "focal_gamma"].n.sum() == sum(
        1 for t in study.trials if "focal_gamma" in t.params and t.state == TrialState.COMPLETE)
    caption = (out / "factors.md").read_text().split("\n")[0]
    assert (
        "not an ablation" in caption and "adaptively" in caption and "confounded" in caption and "survivors" in caption
    )
    cells = pd.read_csv(out / "cells.csv")
    assert cells.n.sum() == sum(t.state == TrialState.COMPLETE for t in study.trials)

    best = study.best_trial
    rows = normalize_rows(best.user_attrs["test_confusion"])
    present = np.asarray(best.user_attrs["test_confusion"]).sum(axis=1) > 0
    assert np.allclose(rows.sum(axis=1)[present], 1.0)
    report = (out / "report.md").read_text()
    assert f"best: trial {best.number}, " in report
    assert "1 failed" in report and "failure reasons: cuda_oom ×1" in report and "![curves](curves.png)" in report
    # 7 complete trials: too few for importances, and the report says so instead of printing noise
    assert "need at least 20 complete trials" in report and not (out / "importance.csv").exists()
    assert "$\\pm$" in (out / "factors.tex").read_text() and "\\toprule" in (out / "factors.tex").read_text()
    # the clinical section: from the stored per-image predictions, thresholds on validation
    assert "## Endpoints and calibration" in report and (out / "calibration.csv").is_file()
    assert (out / "reliability_best.png").is_file()
    endpoints = pd.read_csv(out / "endpoints.csv")
    assert set(endpoints.level) == {"image", "patient"} and set(endpoints.endpoint) == {"referable"}
    assert (endpoints.auc_low <= endpoints.auc).all() and (endpoints.auc <= endpoints.auc_high).all()
    assert (out / "roc_referable_best.png").is_file()
    assert "no pruning what-if: this study ran with a pruner" in report  # `made` runs the median pruner


def test_tex_tables_compile(made):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-base)")
    root, _, _ = made
    assert run_cli("report", "abl", "--format", "tex", cwd=root).returncode == 0
    written = sorted((root / "results" / "abl").glob("*.tex"))
    assert {p.name for p in written} >= {"factors.tex", "cells.tex"}
    doc = root / "doc.tex"  # every table the report wrote, in one minimal document
    doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage{graphicx}\\begin{document}"
                   + "".join(f"\\input{{results/abl/{p.name}}}" for p in written) + "\\end{document}\n")
    result = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert {"endpoints.tex", "calibration.tex", "data.tex"} <= {p.name for p in written}
    assert "Overfull \\hbox" not in (root / "doc.log").read_text(errors="replace")  # every table fits the page


def test_report_bad_inputs(made, tmp_path):
    root, _, _ = made
    for args, fragment in (
        (("report", "nope"), "no study 'nope'"),
        (("report", "abl", "--format", "docx"), "--format docx"),
    ):
        result = run_cli(*args, cwd=root)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr
    optuna.create_study(study_name="empty", storage=storage_of(root), load_if_exists=True)
    result = run_cli("report", "empty", cwd=root)
    assert result.returncode == 2 and "no finished trials" in result.stderr
    result = run_cli("report", "abl", cwd=tmp_path)
    assert result.returncode == 2 and "no storage" in result.stderr


def test_report_of_a_one_trial_study(made, tmp_path):
    root, data, torch_home = made
    result = run_cli(
        "run",
        "dr_focal",
        "--data",
        str(data),
        "--trials",
        "1",
        "--set",
        "arch=resnet18",
        "--set",
        "epochs=1",
        "--set",
        "image_size=32",
        "--storage",
        f"sqlite:///{tmp_path / 'one.db'}",
        cwd=tmp_path,
        torch_home=torch_home,
    )
    assert result.returncode == 0, result.stderr
    report = run_cli(
        "report",
        "dr_focal",
        "--storage",
        f"sqlite:///{tmp_path / 'one.db'}",
        "--out",
        str(tmp_path / "rep"),
        cwd=tmp_path,
    )
    assert report.returncode == 0, report.stderr
    assert "need at least 20 complete trials" in (tmp_path / "rep" / "report.md").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
def test_dashboard_serves_study_trials_and_artifacts_in_chromium(made, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, _, _ = made
    assert run_cli("report", "abl", cwd=root).returncode == 0  # also saves the dashboard note
    port = free_port()
    env = repo_env()
    server = subprocess.Popen(
        [sys.executable, "-m", "study", "dashboard", "abl", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = server.stdout.readline()
        assert first.startswith(f"dashboard: http://127.0.0.1:{port}/dashboard/studies/"), first
        study_url = first.split()[1]
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for arg in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            f"--user-data-dir={tmp_path / 'chrome'}",
        ):
            options.add_argument(arg)
        deadline = time.time() + 30
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            driver.get(f"{study_url}/note")  # the study's note page shows what `report` saved
            WebDriverWait(driver, 90).until(
                lambda d: "Settings and best trial" in d.find_element(By.TAG_NAME, "body").text
            )
            study = optuna.load_study(study_name="abl", storage=storage_of(root))
            best = study.best_trial
            driver.get(f"{study_url}/trials?numbers={best.number}")
            WebDriverWait(driver, 90).until(
                lambda d: f"confusion_trial{best.number}.png" in d.find_element(By.TAG_NAME, "body").text
            )
            # the trial's note (Markdown, rendered): outcome, best epoch, the metrics table, the config
            WebDriverWait(driver, 60).until(
                lambda d: "best epoch (on validation kappa)" in d.find_element(By.TAG_NAME, "body").text
            )
            body = driver.find_element(By.TAG_NAME, "body").text
            assert "abl" in body and f"Trial {best.number}" in body and "Complete" in body
            assert f"Trial {best.number}: complete" in body and "Sampled:" in body
            kappa = f"{best.user_attrs['test_metrics']['kappa']:.3f}"
            rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "table tr")]
            assert any(r.startswith("test") and kappa in r for r in rows), rows
            sources = [
                img.get_attribute("src")
                for img in driver.find_elements(By.TAG_NAME, "img")
                if "/artifacts/" in (img.get_attribute("src") or "")
            ]
            assert len(sources) >= 2
            driver.save_screenshot(str(tmp_path / "dashboard.png"))
            # refreshing the README's picture: STUDY_DOCS_SCREENSHOT=docs/dashboard.png
            if os.environ.get("STUDY_DOCS_SCREENSHOT"):
                shutil.copy(tmp_path / "dashboard.png", ROOT / os.environ["STUDY_DOCS_SCREENSHOT"])
        finally:
            driver.quit()
        import urllib.request

        for source in sources:  # the drawn figures, not the placeholders attached while the trial ran
            with urllib.request.urlopen(source, timeout=10) as response:
                content = response.read()
            assert content.startswith(b"\x89PNG\r\n\x1a\n") and len(content) > 5000
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:  # never let teardown hide the test's own failure
            server.kill()
            server.wait()
