"""Let ``pytest --nbval`` run the jupytext ``notebooks/*.py`` sources directly.

nbval only collects ``.ipynb`` files and reads them with ``nbformat.read``. Here its
``nbformat`` reference is swapped for a proxy whose ``read`` understands ``py:percent``,
and the ``.py`` notebooks are collected as nbval notebook files. Their paired ``.ipynb``
(which carry stored GPU outputs) are not collected: the ``.py`` is the thing under test.

Text notebooks carry no outputs, so nbval checks that every cell runs without error; the
results are checked by the hidden ``assert`` cells (tag ``remove-cell``) in each notebook.
"""


class _NbformatReadingPercent:
    """``nbformat`` with a ``read`` that also reads jupytext ``py:percent`` files."""

    def __getattr__(self, name):
        import nbformat

        return getattr(nbformat, name)

    @staticmethod
    def read(fp, as_version=4, **kwargs):
        import jupytext
        import nbformat

        if str(fp).endswith(".py"):
            return jupytext.read(fp, fmt="py:percent")
        return nbformat.read(fp, as_version=as_version, **kwargs)


def _nbval_on(config) -> bool:
    return bool(getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False))


def pytest_configure(config):
    if _nbval_on(config):
        import nbval.plugin

        nbval.plugin.nbformat = _NbformatReadingPercent()


def pytest_ignore_collect(collection_path, config):
    if collection_path.suffix == ".ipynb" and collection_path.with_suffix(".py").exists():
        return True  # the .py source is tested instead
    return None


def pytest_collect_file(file_path, parent):
    if _nbval_on(parent.config) and file_path.suffix == ".py" and file_path.parent.name == "notebooks":
        import nbval.plugin

        return nbval.plugin.IPyNbFile.from_parent(parent, path=file_path)
    return None
