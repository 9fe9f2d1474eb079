"""The README's method table is the registry's (feddat_flwr/methods.py)."""

import re
from pathlib import Path

from feddat_flwr.methods import METHODS

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_method_table_lists_exactly_the_registered_methods():
    text = README.read_text()
    table = re.search(r"<!-- methods-table -->\n(.*?)<!-- /methods-table -->", text, re.S).group(1)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.strip().splitlines()[2:]]
    expected = [[f"`{m.name}`", m.description, ", ".join(m.trains), "yes" if m.communicates else "no",
                 f"`{m.personalised}`"] for m in METHODS.values()]
    assert rows == expected
