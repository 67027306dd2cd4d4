"""The README is the auditor's reference for the journal: every CORDON_ field cordond or cordonctl
writes must be documented there, or an auditor cannot know what an entry means."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Environment variables, not journal fields.
NOT_FIELDS = {"CORDON_LIBBPF_DEBUG", "CORDON_CONTROL_SOCKET", "CORDON_ENROLL_REQUIRED", "CORDON_ID_TOKEN"}


def test_every_journal_field_is_documented():
    written = set()
    for path in (ROOT / "userspace").rglob("*.cc"):
        written |= set(re.findall(r'"(CORDON_[A-Z0-9_]+)', path.read_text()))
    assert len(written) > 40, written  # the search found cordon's fields
    readme = (ROOT / "README.md").read_text()
    missing = sorted(f for f in written - NOT_FIELDS if f"`{f}`" not in readme)
    assert not missing, f"journal fields the README does not document: {missing}"
