"""PostgreSQL: the tsvector also holds each message's week and labels, as terms of its workspace

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 03:00:00

A GIN bitmap of a word neither orders nor bounds its matches by date, and the listing walk
tests rows one by one: a word found only in old mail cost either every match fetched and
sorted or every newer row tested (0.5 s at a million messages), and a label was tested per
row from its JSON. Here the generated tsvector gains terms the GIN index can intersect with
the words: `k:<workspace>:<week>` (weeks of 604,800 s since the Unix epoch) and
`l:<md5 of workspace and lower-cased label>` for each label. Both contain a `:`, which no
word of the text can (0007 turns every other character into a space). The functions are
the single definition the column and the queries (core/search/postgres_text.py) share.
Re-adding the column rewrites the table and rebuilds its GIN index (the backfill).
"""

from alembic import op

from mailsync.db.migrations import revisions

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

WEEK_SECONDS = 604_800

_FUNCTIONS = [
    # The workspace is in each term, so a term's posting list is one workspace's rows.
    "CREATE FUNCTION message_week_term(workspace_id text, week bigint) RETURNS text "
    "LANGUAGE sql IMMUTABLE PARALLEL SAFE AS "
    "$$ SELECT 'k:' || left(md5(workspace_id), 12) || ':' || week $$",
    "CREATE FUNCTION message_label_term(workspace_id text, label text) RETURNS text "
    "LANGUAGE sql IMMUTABLE PARALLEL SAFE AS "
    "$$ SELECT 'l:' || md5(workspace_id || chr(31) || lower(label)) $$",
    "CREATE FUNCTION message_week(sent timestamptz) RETURNS bigint "
    "LANGUAGE sql IMMUTABLE PARALLEL SAFE AS "
    f"$$ SELECT floor(extract(epoch FROM sent) / {WEEK_SECONDS})::bigint $$",
    # IMMUTABLE as a generated column needs; lower() and md5() are, and the epoch of a
    # timestamptz does not depend on the session's time zone.
    "CREATE FUNCTION message_search_terms(workspace_id text, sent timestamptz, labels json) "
    "RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ "
    "SELECT array_to_tsvector(ARRAY("
    "SELECT message_week_term(workspace_id, message_week(sent)) WHERE sent IS NOT NULL "
    "UNION SELECT message_label_term(workspace_id, e.v) FROM json_array_elements_text("
    "CASE WHEN json_typeof(labels) = 'array' THEN labels ELSE '[]' END) AS e(v))) $$",
]
_DROP_FUNCTIONS = [
    "DROP FUNCTION message_search_terms(text, timestamptz, json)",
    "DROP FUNCTION message_week(timestamptz)",
    "DROP FUNCTION message_label_term(text, text)",
    "DROP FUNCTION message_week_term(text, bigint)",
]


def _words() -> str:
    """0007's tsvector of the text columns."""
    search = revisions.load("0007_message_search.py")
    return f"to_tsvector('simple', regexp_replace({search._PG_TEXT}, '[^[:alnum:]]+', ' ', 'g'))"


def _replace_column(expression: str) -> None:
    op.execute("ALTER TABLE message DROP COLUMN search")  # and its GIN index
    op.execute(
        f"ALTER TABLE message ADD COLUMN search tsvector GENERATED ALWAYS AS ({expression}) STORED"
    )
    op.execute("CREATE INDEX ix_message_search ON message USING gin (search)")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for statement in _FUNCTIONS:
        op.execute(statement)
    _replace_column(f"{_words()} || message_search_terms(workspace_id, date, labels)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    _replace_column(_words())
    for statement in _DROP_FUNCTIONS:
        op.execute(statement)
