"""Docs that cannot drift: every ``python main.py ...`` command in README.md, CONTRIBUTING.md, docs/*.md and
experiments/*/README.md is composed against conf/ (as ``python main.py --cfg job <overrides>`` would, in process:
Hydra's compose API), so a renamed key, group or option fails here; docs/config.md's table of config groups is
checked against conf/; every relative link of those pages points at a file that exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from fiqa.utils import resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "experiments").glob("*/README.md")]
    + ([ROOT / "CONTRIBUTING.md"] if (ROOT / "CONTRIBUTING.md").exists() else [])
)
PLACEHOLDER = "/tmp/fiqa-docs/placeholder"  # what <model>, <photos>, <time> ... stand for
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "--config-name", "-cn", "--config-dir", "-cd"}


def _blocks(text: str) -> list[str]:
    """Shell lines of the page: fenced ```bash / ```sh / ``` blocks (continuations joined) and inline `...`."""
    out, env = [], {}  # the page's shell variables: NAME="..." and `for NAME in first ...`, in page order
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if lang in ("", "bash", "sh", "shell", "console"):
            for line in body.replace("\\\n", " ").splitlines():
                line = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), line)
                if m := re.match(r"\s*(\w+)=(\"[^\"]*\"|'[^']*'|\S+)\s*$", line):
                    env[m.group(1)] = m.group(2).strip("\"'")
                elif m := re.match(r"\s*for (\w+) in (\S+)", line):
                    env[m.group(1)] = m.group(2).rstrip(";")
                out.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for line in re.findall(r"`([^`\n]*main\.py[^`\n]*)`", prose):
        out.append(re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), line))
    return out


def _overrides(line: str) -> list[str] | None:
    """The Hydra overrides of one shell line that runs main.py, placeholders filled; None if it runs no main.py."""
    line = re.sub(r"\[([\w./]+=<[^>]*>)\]", r"\1", line)  # an optional argument written `[key=<value>]`
    line = re.sub(r"<[^>]*>", PLACEHOLDER, line)
    line = line.replace("...,", "")  # `[...,serfiq]`: "the earlier items, then"
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote: not a command line
        return None
    at = next((i for i, w in enumerate(words) if w == "main.py" or w.endswith("/main.py")), None)
    if at is None or at == 0 and words[0] != "main.py" and "python" not in line:
        return None
    args, out, skip = words[at + 1 :], [], False
    for a in args:
        if skip:
            skip = False
        elif a in FLAGS_WITH_VALUE:
            skip = True
        elif a.startswith("-"):  # -m, --multirun, --help
            continue
        elif a in ("|", "&&", ";", ">", "2>&1") or a.startswith(">"):
            break
        elif a == PLACEHOLDER or a == "...":  # a placeholder standing for several overrides (`<the same keys>`)
            continue
        else:
            out.append(a)
    return out


def _commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for page in PAGES:
        for line in _blocks(page.read_text()):
            if "main.py" not in line:
                continue
            ovs = _overrides(line)
            if ovs is not None:
                found.append((str(page.relative_to(ROOT)), line.strip(), ovs))
    return found


COMMANDS = _commands()


def _first_of_sweeps(overrides: list[str]) -> list[str]:
    """A sweep (`a=1,2`, `range(...)`) composes each of its points alike: the first stands for them."""
    out = []
    for raw, o in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        out.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else raw)
    return out


@pytest.fixture(scope="module")
def hydra_conf():
    resolvers.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def compose_command(overrides: list[str]):
    """Compose as ``main.py --cfg job`` does, then resolve every interpolation but the missing mandatory ones."""
    cfg = compose(config_name="config", overrides=_first_of_sweeps(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    from fiqa.tasks import _tasks

    assert cfg.task in _tasks(), f"task={cfg.task!r} is not a task; valid: {sorted(_tasks())}"
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # hydra.job.num exists only in a run
    OmegaConf.to_container(job, resolve=True, throw_on_missing=False)
    return cfg


def test_the_pages_hold_commands():
    assert len(COMMANDS) > 60, [c[1] for c in COMMANDS]  # the parser found them (a broken regex finds none)
    pages = {c[0] for c in COMMANDS}
    assert {"README.md", "docs/methods.md", "docs/data.md", "docs/scale_out.md", "docs/evaluation.md"} <= pages


@pytest.mark.parametrize("page,line,overrides", COMMANDS, ids=[f"{c[0]}:{i}" for i, c in enumerate(COMMANDS)])
def test_documented_command_composes(hydra_conf, page, line, overrides):
    try:
        compose_command(overrides)
    except Exception as e:  # the page, the command and Hydra's own message (the key, the valid options)
        pytest.fail(f"{page}: `{line}` does not compose: {type(e).__name__}: {e}", pytrace=False)


def test_a_renamed_key_fails(hydra_conf):
    """The check can fail: an override of a key that conf/ does not have is refused, as a doc typo would be."""
    compose_command(["task=quality", "score.detect=true"])
    with pytest.raises(Exception, match="score.detekt"):
        compose_command(["task=quality", "score.detekt=true"])
    with pytest.raises(Exception, match="magfase"):
        compose_command(["method=magfase"])


# ---- docs/config.md against conf/ ------------------------------------------------------------
BUILTIN = {"hydra/launcher": {"basic", "submitit_slurm", "submitit_local"}}  # from Hydra and its plugin


def _documented_groups() -> dict[str, set[str]]:
    rows = re.findall(r"(?m)^\| (`[^|]*`) \| (.*) \|$", (ROOT / "docs" / "config.md").read_text())
    out: dict[str, set[str]] = {}
    for groups, options in rows:
        names = {t for t in re.findall(r"`([^`]*)`", options) if re.fullmatch(r"[a-z0-9_]+", t)}
        for g in re.findall(r"`([^`]+)`", groups):
            out[g] = names
    return out


def _conf_groups() -> dict[str, set[str]]:
    groups = {}
    for d in sorted(p for p in CONF.rglob("*") if p.is_dir()):
        names = {f.stem for f in d.glob("*.yaml")}
        if names:
            groups[str(d.relative_to(CONF))] = names
    return groups


def test_config_table_lists_every_group_and_option():
    doc, conf = _documented_groups(), _conf_groups()
    assert set(conf) - set(doc) == set(), f"groups in conf/ missing from docs/config.md: {sorted(set(conf) - set(doc))}"
    for g, options in conf.items():
        assert options <= doc[g], f"docs/config.md, group `{g}`: options missing: {sorted(options - doc[g])}"
        extra = doc[g] - options - BUILTIN.get(g, set())
        assert not extra, f"docs/config.md, group `{g}`: options not in conf/{g}/: {sorted(extra)}"


# ---- links -----------------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_exist(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve()
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md":
            heads = re.findall(r"(?m)^#+ (.*)$", re.sub(r"```.*?```", "", dest.read_text(), flags=re.S))
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}
            if anchor not in slugs:
                broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 12_000, f"README.md is {len(readme.encode())} bytes: move detail to docs/"
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
