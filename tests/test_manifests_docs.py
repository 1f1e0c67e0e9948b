import re
from pathlib import Path

from manifests.schema import FIELD_DOCS, SCHEMAS

DOC = Path(__file__).resolve().parents[1] / "docs" / "manifest.md"


def _section_fields(text: str, table: str) -> set[str]:
    """Backticked names in the first column of the field table under '## The `table` table'."""
    section = text.split(f"## The `{table}` table", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M))


def test_every_schema_field_is_documented_in_docs_and_field_docs():
    text = DOC.read_text()
    for table, schema in SCHEMAS.items():
        assert _section_fields(text, table) == set(schema.names), table
        assert set(FIELD_DOCS[table]) == set(schema.names), table
        assert all(FIELD_DOCS[table][n].strip() for n in schema.names)
