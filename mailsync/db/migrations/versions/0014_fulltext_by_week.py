"""PostgreSQL: full text indexed by week: a GIN index of each word and label joined to its week

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 03:00:00

A GIN bitmap of a word neither orders nor bounds its matches by date, and the listing walk
tests rows one by one: a word found only in old mail cost either every match fetched and
sorted or every newer row tested (0.5 s at a million messages), and a label was tested per
row from its JSON. ANDing a term per week into the tsvector was tried first: GIN's AND costs
about the shorter posting list, the week's (~3 ms a week at a million messages, for a word
absent from it). Here each of a message's words, and each of its labels, becomes one term
with its workspace and its week in it (`k<workspace>:<week>:<word>`, `...:l:<md5 of the
lower-cased label>`; week `u` for a message without a date): "this word in this week" is
one posting list, absent when empty. It is an expression index (nothing more is stored in
the row) and it replaces 0007's GIN index of the words, which nothing reads any more (the
listing walk tests each row's tsvector). A `:` can end no word (0007 turns every other
character into a space), so no word's term is a label's. A query (core/search/postgres_text.py)
builds its terms with the same message_week_prefix().
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

WEEK_SECONDS = 604_800
UNDATED_WEEK = "u"
INDEX = "ix_message_week_terms"
EXPRESSION = "message_week_terms(workspace_id, date, search, labels)"

_FUNCTIONS = [
    "CREATE FUNCTION message_week(sent timestamptz) RETURNS bigint "
    "LANGUAGE sql IMMUTABLE PARALLEL SAFE AS "
    f"$$ SELECT floor(extract(epoch FROM sent) / {WEEK_SECONDS})::bigint $$",
    "CREATE FUNCTION message_week_prefix(workspace_id text, week text) RETURNS text "
    "LANGUAGE sql IMMUTABLE PARALLEL SAFE AS "
    "$$ SELECT 'k' || left(md5(workspace_id), 12) || ':' || week || ':' $$",
    # IMMUTABLE, as an index expression must be: lower() and md5() are, and the epoch of a
    # timestamptz does not depend on the session's time zone.
    "CREATE FUNCTION message_week_terms(workspace_id text, sent timestamptz, words tsvector, "
    "labels json) RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ "
    "SELECT array_to_tsvector(ARRAY(SELECT prefix || term FROM "
    f"(SELECT message_week_prefix(workspace_id, coalesce(message_week(sent)::text, "
    f"'{UNDATED_WEEK}')) AS prefix) AS p, LATERAL ("
    "SELECT unnest(tsvector_to_array(words)) AS term "
    "UNION SELECT 'l:' || md5(lower(e.v)) FROM json_array_elements_text("
    "CASE WHEN json_typeof(labels) = 'array' THEN labels ELSE '[]' END) AS e(v)) AS t)) $$",
]
_DROP_FUNCTIONS = [
    "DROP FUNCTION message_week_terms(text, timestamptz, tsvector, json)",
    "DROP FUNCTION message_week_prefix(text, text)",
    "DROP FUNCTION message_week(timestamptz)",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for statement in _FUNCTIONS:
        op.execute(statement)
    op.execute(f"CREATE INDEX {INDEX} ON message USING gin ({EXPRESSION})")
    op.drop_index("ix_message_search", table_name="message")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.execute("CREATE INDEX ix_message_search ON message USING gin (search)")
    op.drop_index(INDEX, table_name="message")
    for statement in _DROP_FUNCTIONS:
        op.execute(statement)
