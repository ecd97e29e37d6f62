"""Unit tests for the browser-free parts of .ci/browser_check.py (toc parsing, Colab links).

The browser run itself is exercised by CI on the built book; these run in well under a second.
"""
import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_browser_check():
    # .ci/ is not a package, so load the script as a module by path.
    spec = importlib.util.spec_from_file_location("browser_check", REPO_ROOT / ".ci" / "browser_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


bc = _load_browser_check()

NESTED_TOC = {
    "format": "jb-book",
    "root": "book/intro",
    "parts": [
        {"caption": "Part one", "chapters": [
            {"file": "notebooks/01_kan.py", "sections": [{"file": "notebooks/01b_detail"}]},
            {"url": "https://example.org", "title": "an external link"},
        ]},
        {"caption": "Back matter", "chapters": [{"file": "book/bibliography.md"}]},
    ],
}


def test_toc_docnames_lists_root_then_files_in_order_without_suffixes():
    assert bc.toc_docnames(NESTED_TOC) == [
        "book/intro", "notebooks/01_kan", "notebooks/01b_detail", "book/bibliography"]


def test_toc_docnames_reads_a_flat_chapters_toc_and_drops_repeats():
    toc = {"root": "index.md", "chapters": [{"file": "a"}, {"file": "a.ipynb"}, {"file": "b"}]}
    assert bc.toc_docnames(toc) == ["index", "a", "b"]


def test_toc_docnames_refuses_glob_entries_and_a_missing_root():
    with pytest.raises(ValueError, match="glob"):
        bc.toc_docnames({"root": "intro", "chapters": [{"glob": "notebooks/*"}]})
    with pytest.raises(ValueError, match="root"):
        bc.toc_docnames({"chapters": [{"file": "a"}]})


def test_read_toc_of_this_repository_starts_at_its_root():
    import yaml

    toc_path = REPO_ROOT / "_toc.yml"
    names = bc.read_toc(toc_path)
    assert names[0] == bc.strip_source_suffix(yaml.safe_load(toc_path.read_text())["root"])
    assert all(bc.html_path(name).endswith(".html") for name in names)


def test_colab_url_maps_to_the_path_after_the_branch():
    url = "https://colab.research.google.com/github/labkit-book/labkit/blob/main/notebooks/01_kan.ipynb"
    assert bc.colab_url_to_repo_path(url) == "notebooks/01_kan.ipynb"
    nested = "https://colab.research.google.com/github/org/repo/blob/dev/a/b/c.ipynb"
    assert bc.colab_url_to_repo_path(nested) == "a/b/c.ipynb"


@pytest.mark.parametrize("url", [
    "https://github.com/org/repo/blob/main/x.ipynb",                 # not Colab
    "https://colab.research.google.com/drive/1abcdef",               # a Drive notebook
    "https://colab.research.google.com/github/org/repo/tree/main/x",  # not a blob
    "https://colab.research.google.com/github/org/repo/blob/main",    # no path after the branch
])
def test_colab_url_of_another_shape_maps_to_none(url):
    assert bc.colab_url_to_repo_path(url) is None


def test_is_notebook_source_tells_notebooks_from_plain_markdown(tmp_path):
    (tmp_path / "nb_ipynb.ipynb").write_text("{}")
    (tmp_path / "nb_py.py").write_text("# %%\nx = 1\n")
    (tmp_path / "myst_nb.md").write_text("---\nkernelspec:\n  name: python3\n---\n# Title\n")
    (tmp_path / "plain.md").write_text("# Title\n\nkernelspec: mentioned in text only\n")
    assert bc.is_notebook_source(tmp_path, "nb_ipynb")
    assert bc.is_notebook_source(tmp_path, "nb_py")
    assert bc.is_notebook_source(tmp_path, "myst_nb")
    assert not bc.is_notebook_source(tmp_path, "plain")
    assert not bc.is_notebook_source(tmp_path, "missing")


def test_local_and_remote_urls():
    assert bc.is_local_url("http://127.0.0.1:8000/_static/x.js")
    assert bc.is_local_url("data:image/png;base64,AAAA")
    assert not bc.is_local_url("https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js")
    assert bc.is_browser_own_request("http://127.0.0.1:8000/favicon.ico")
    assert not bc.is_browser_own_request("http://127.0.0.1:8000/_static/favicon.ico")


def test_format_table_marks_failed_checks_and_lists_their_messages():
    good, bad = bc.PageResult("book/intro"), bc.PageResult("notebooks/01_kan")
    bad.fail("math", "not typeset:\n  \\[ x \\]")
    table = bc.format_table([good, bad])
    assert "book/intro" in table and "PASS" in table
    assert "notebooks/01_kan [math] not typeset: \\[ x \\]" in table
    assert not bad.passed and good.passed


def test_main_exits_2_when_the_book_was_not_built(tmp_path, capsys):
    assert bc.main(["--html", str(tmp_path / "missing"), "--toc", str(REPO_ROOT / "_toc.yml")]) == 2
    assert "jupyter-book build" in capsys.readouterr().err
