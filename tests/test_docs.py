"""The docs stay true to the code: docs/api.md names every public name (regenerate it with
`python docs/make_api.py > docs/api.md`), and every doc the README points to exists."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import make_api  # noqa: E402


def test_api_md_lists_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text()
    missing = []
    for module in make_api.MODULES:
        section = text.split(f"## `{module}`", 1)
        assert len(section) == 2, f"docs/api.md has no section for {module}"
        body = section[1].split("\n## ", 1)[0]
        mod = make_api.import_module(module)
        if mod is None:  # an optional module whose library is not installed here
            continue
        for name in make_api.public_names(mod):
            if isinstance(getattr(mod, name), (str, tuple, dict)):
                continue
            if f"| `{name}` |" not in body:
                missing.append(f"{module}.{name}")
    assert not missing, f"docs/api.md is missing {missing}; run python docs/make_api.py > docs/api.md"


def test_readme_doc_links_exist():
    readme = (ROOT / "README.md").read_text()
    for path in re.findall(r"`(docs/[\w.-]+)`", readme):
        assert (ROOT / path).exists(), path
