"""The static feature dashboard: files, content, and a real headless Chromium opening it."""

import csv
import json
import os
import re

import pytest
import torch
from analysis_fixtures import contexts, random_sae, tiny_hooked
from headless_chromium import Chromium, find_chromium, requests_outside

from sae_lens_jumprelu.atomic import OutputExistsError
from sae_lens_jumprelu.commands.cli import parse_args
from sae_lens_jumprelu.dashboard import DashboardConfig, build_dashboard, choose_features
from sae_lens_jumprelu.dashboard.command import parse_features
from sae_lens_jumprelu.dashboard.html import page_name


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("dash") / "site"
    sae = random_sae()
    with torch.no_grad():
        sae.threshold[5] = 1e6  # dead: never chosen by default
    config = DashboardConfig(n_frequent=6, n_random=3, examples=3)
    result = build_dashboard(
        tiny_hooked(), sae, contexts(12).split(5), out, config, exclude_token_ids=[2],
        source={"dataset": "random <ids>"},
    )  # fmt: skip
    return result


def test_choose_features_by_hand():
    frequency = torch.tensor([0.1, 0.0, 0.5, 0.3, 0.2, 0.05, 0.0, 0.4])
    config = DashboardConfig(n_frequent=3, n_random=2, seed=0)
    chosen = choose_features(frequency, config)
    assert chosen[:3] == [2, 7, 3]
    assert len(chosen) == 5 and set(chosen[3:]) <= {4, 0, 5}  # fired, not among the top 3
    assert choose_features(frequency, config) == chosen  # seeded
    assert choose_features(frequency, DashboardConfig(n_frequent=10, n_random=5)) == [
        2, 7, 3, 4, 0, 5
    ]  # fmt: skip


def test_files_and_their_content(site):
    out = site.out
    assert len(site.features) == 9 and 5 not in site.features
    assert site.n_tokens == 12 * 15
    for feature in site.features:
        assert (out / page_name(feature)).is_file()
    summary = json.loads((out / "dashboard.json").read_text())
    rows = list(csv.DictReader(open(out / "features.csv")))
    assert [int(r["feature"]) for r in rows] == site.features
    assert [f["feature"] for f in summary["features"]] == site.features
    frequencies = [float(r["frequency"]) for r in rows]
    assert frequencies[:6] == sorted(frequencies[:6], reverse=True)
    index = (out / "index.html").read_text()
    assert "random &lt;ids&gt;" in index  # escaped
    page = (out / page_name(site.features[0])).read_text()
    assert "&lt;" in page and "<svg" in page and 'id="promoted"' in page
    # Self-contained: no reference to anything but the pages beside it.
    for html in out.glob("*.html"):
        refs = re.findall(r'(?:src|href)="([^"]+)"', html.read_text())
        assert all(re.fullmatch(r"(index|feature-\d{6})\.html", ref) for ref in refs), refs


def test_refuses_existing_output_and_bad_features(site, tmp_path):
    model, sae = tiny_hooked(), random_sae(d_sae=48)
    with pytest.raises(OutputExistsError):
        build_dashboard(model, sae, [contexts(2)], site.out)
    with pytest.raises(IndexError, match="feature index 48 is out of range"):
        build_dashboard(model, sae, [contexts(2)], tmp_path / "x", DashboardConfig(features=[48]))
    assert not (tmp_path / "x").exists()


def test_feature_argument_parsing():
    assert parse_features("0-3,7,2") == [0, 1, 2, 3, 7]
    args = parse_args(["dashboard", "sae", "--out", "d", "--features", "5-6"])
    assert args.features == [5, 6] and args.examples == 10 and args.dtype == "float32"
    assert parse_args(["dashboard", "sae", "--out", "d", "--dtype", "bfloat16"]).dtype == "bfloat16"
    with pytest.raises(SystemExit):
        parse_args(["dashboard", "sae", "--out", "d", "--features", "x-3"])


# Skipped only outside CI: .ci/run installs chromium, so there a missing browser is a failure.
requires_chromium = pytest.mark.skipif(
    find_chromium() is None and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (apt-get install chromium)",
)


@requires_chromium
def test_chromium_renders_the_site_without_requests_outside_it(site):
    out = site.out
    executable = find_chromium()
    assert executable is not None, "CI must have chromium: .ci/run installs it"
    browser = Chromium(executable)
    try:
        index = browser.open((out / "index.html").as_uri())
        assert requests_outside(index.requests, out) == []
        links = index.evaluate(
            "Array.from(document.querySelectorAll('#features tbody a')).map(a => a.textContent)"
        )
        assert [int(x) for x in links] == site.features
        # Sorting in the browser: by frequency ascending from the URL, then by a header click.
        ascending = browser.open((out / "index.html").as_uri() + "#sort=frequency")
        values = ascending.evaluate(
            "Array.from(document.querySelectorAll('td[data-col=frequency]'))"
            ".map(td => parseFloat(td.dataset.value))"
        )
        assert values == sorted(values) and values != sorted(values, reverse=True)
        click = (
            "document.querySelector('th[data-col=max_activation]').click();"
            "Array.from(document.querySelectorAll('td[data-col=max_activation]'))"
            ".map(td => parseFloat(td.dataset.value))"
        )
        first, second = ascending.evaluate(click), ascending.evaluate(click)
        assert first == sorted(first, reverse=True) and first != sorted(first)  # descending
        assert second == sorted(second)  # a second click reverses
        feature = site.features[0]
        page = browser.open((out / page_name(feature)).as_uri())
        assert requests_outside(page.requests, out) == []
        assert page.evaluate("document.querySelector('h1').textContent") == f"Feature {feature}"
        shown = page.evaluate(
            "Array.from(document.querySelectorAll('.example')).map(e => "
            "Array.from(e.querySelectorAll('.tok')).map(s => s.textContent))"
        )
        summary = json.loads((out / "dashboard.json").read_text())["features"][0]
        assert summary["feature"] == feature and len(shown) == 3
        assert all(re.fullmatch(r"<\d+>", token) for tokens in shown for token in tokens)
        bars = page.evaluate("document.querySelectorAll('#histogram rect').length")
        assert bars > 0
        promoted = page.evaluate("document.querySelectorAll('#promoted tr').length")
        assert promoted == 10
    finally:
        browser.close()
