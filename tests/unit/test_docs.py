"""The documentation must not drift from the code: generated tables, links, the README's example."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest

from hecate.adapters import config

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

# [text](target): the target up to the first space or ")" (no titles in these pages).
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)


def test_reference_tables_match_the_models(update_docs: ModuleType) -> None:
    module = update_docs
    wanted = module.pages()
    assert set(wanted) == {REPO / "docs" / "configuration.md", REPO / "docs" / "runs.md"}
    for page, text in wanted.items():
        assert page.read_text() == text, f"{page.relative_to(REPO)}: reference table is stale: run `make docs`"
    assert "`trigger.safety_factor` | float | `1.1`" in (REPO / "docs" / "configuration.md").read_text()


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(FENCE.sub("", page.read_text()))]


def broken_links(page: Path) -> list[str]:
    """The page's relative links whose file, or heading anchor in a Markdown file, does not exist."""
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:: not this repository's
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_at_what_exists(page: Path) -> None:
    assert broken_links(page) == [], f"{page.relative_to(REPO)}: broken links"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in links(README)}
    assert set(PAGES[1:]) <= linked


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("# B, the `second` page\n")
    (tmp_path / "a.md").write_text(
        "# A page\n\n[ok](#a-page) [ok](b.md#b-the-second-page) [web](https://example.org/x)\n"
        "[gone](c.md) [bad](b.md#nowhere)\n\n```\n[in a code block](d.md)\n```\n"
    )
    assert broken_links(tmp_path / "a.md") == ["c.md: no such file", "b.md#nowhere: no heading #nowhere in b.md"]


def test_the_readme_minimal_config_loads_with_the_real_loader(tmp_path: Path) -> None:
    blocks = YAML_BLOCK.findall(README.read_text())
    assert len(blocks) == 3, "the README's yaml: the minimal hecate.yaml, then the two-host pair"
    assert 12 <= len(blocks[0].splitlines()) <= 20
    path = tmp_path / "hecate.yaml"
    path.write_text(blocks[0])
    cfg = config.load(path, {})
    assert [n.name for n in cfg.cluster.nodes] == ["titan-0a", "titan-04", "titan-05"]
    assert [u.name for u in cfg.ups] == ["pyrphoros"]
    assert cfg.shutdown.execute is False
    assert cfg.flux.bootstrap_objects


def test_the_readme_two_host_configs_load_with_the_real_loader(tmp_path: Path) -> None:
    """titan-db's block laid over the minimal config, and tethys's block as it is, with the secret they name."""
    import yaml

    minimal, coordinator, peer_block = YAML_BLOCK.findall(README.read_text())
    secret = tmp_path / "peer-tethys.key"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    titan = {**yaml.safe_load(minimal), **yaml.safe_load(coordinator)}
    tethys = yaml.safe_load(peer_block)
    for doc in (titan["peer"]["trusted"][0], tethys["peer"]):
        assert doc["secret_file"] == "/etc/hecate/peer-tethys.key"
        doc["secret_file"] = str(secret)
    for name, doc in (("titan-db", titan), ("tethys", tethys)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        cfg = config.load(path, {})
        assert cfg.host_name == name
    titan_cfg = config.load(tmp_path / "titan-db.yaml", {})
    tethys_cfg = config.load(tmp_path / "tethys.yaml", {})
    assert titan_cfg.peer.trusted[0].key_id == tethys_cfg.peer.key_id
    assert titan_cfg.peer.listen is not None
    assert tethys_cfg.peer.coordinator_url.endswith(":" + titan_cfg.peer.listen.rpartition(":")[2])
    assert [h.name for h in titan_cfg.hosts] == ["tethys"]
