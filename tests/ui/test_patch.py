"""The diff views' rows (pinflow.ui.patch): line numbers on both sides, the header plain (a
new file's `--- /dev/null` is not a deletion), a removed `-- x` line still a removal."""

from __future__ import annotations

from pinflow.ui.patch import side_by_side, unified

NEW_FILE = """diff --git a/dags/new.py b/dags/new.py
new file mode 100644
index 0000000..e69de29
--- /dev/null
+++ b/dags/new.py
@@ -0,0 +1,2 @@
+from pinflow import DAG
+x = 1
"""

CHANGED = """diff --git a/q.sql b/q.sql
--- a/q.sql
+++ b/q.sql
@@ -10,4 +10,4 @@ select
 a,
--- the old comment
+-- the new comment
 b
\\ No newline at end of file
"""


def test_a_new_file_header_is_plain_and_its_lines_are_numbered():
    rows = unified(NEW_FILE)
    assert [r.kind for r in rows] == ["meta"] * 5 + ["hunk", "add", "add"]
    assert rows[3].text == "--- /dev/null" and rows[3].kind == "meta"
    assert [(r.old, r.new, r.text) for r in rows[-2:]] == [
        (None, 1, "from pinflow import DAG"),
        (None, 2, "x = 1"),
    ]


def test_numbers_on_both_sides_and_a_removed_comment_line():
    rows = unified(CHANGED)
    body = [(r.kind, r.old, r.new, r.text) for r in rows if r.kind not in ("meta", "hunk")]
    assert body == [
        ("same", 10, 10, "a,"),
        ("del", 11, None, "-- the old comment"),
        ("add", None, 11, "-- the new comment"),
        ("same", 12, 12, "b"),
    ]
    assert rows[-1].kind == "meta"  # "\ No newline at end of file"
    split = side_by_side(CHANGED)
    change = next(r for r in split if r[0] == "change")
    assert (change[1].old, change[2].new) == (11, 11)  # the removal beside its replacement
    assert [r[0] for r in split] == ["hunk", "same", "change", "same"]
