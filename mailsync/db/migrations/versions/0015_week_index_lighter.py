"""PostgreSQL: the week index lighter to write (PL/pgSQL terms) and to read (short pending list)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 15:00:00

0014's index expression is a SQL function with subqueries (unnest, a UNION, the labels'
JSON elements), which PostgreSQL cannot inline: each call starts an executor of its own,
~70-130 us a message, most of what the week index added to a write (a load of a million
messages ran 2.9x slower). The same function in PL/pgSQL evaluates plain expressions (the
prefix once, the words joined to it as one string, a loop over the labels by position):
~10 us. It returns the same tsvector for every input (tests/unit/db/test_week_terms_function.py
compares the two), so the index built by 0014 stays valid and is not rebuilt. A word never
holds a space (0007 reduces the text to runs of letters and digits), nor does a label's term
(an md5), which is what lets a space join and split them.

GIN queues new entries in a pending list (4 MB by default) that every scan reads in full
before the index proper: ~0.6 ms a week probe once a load has filled it, against 0.02 ms
with it empty, and a search may probe dozens of weeks. 256 kB bounds that to ~0.04 ms; the
writes it makes more frequent cost nothing measurable (a load of 40,000 messages, 0.29-0.35
ms a message either way).
"""

from alembic import op

from mailsync.db.migrations import revisions

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

INDEX = "ix_message_week_terms"
PENDING_LIST_KB = 256
_SIGNATURE = "message_week_terms(workspace_id text, sent timestamptz, words tsvector, labels json)"
PLPGSQL = f"""
CREATE OR REPLACE FUNCTION {_SIGNATURE} RETURNS tsvector
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  prefix text := message_week_prefix(workspace_id, coalesce(message_week(sent)::text, 'u'));
  terms text[] := coalesce(tsvector_to_array(words), '{{}}');
BEGIN
  IF json_typeof(labels) = 'array' THEN
    FOR i IN 0 .. json_array_length(labels) - 1 LOOP
      terms := terms || ('l:' || md5(lower(labels ->> i)));
    END LOOP;
  END IF;
  IF cardinality(terms) = 0 THEN
    RETURN ''::tsvector;
  END IF;
  RETURN array_to_tsvector(string_to_array(prefix || array_to_string(terms, ' ' || prefix), ' '));
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.execute(PLPGSQL)
    op.execute(f"ALTER INDEX {INDEX} SET (gin_pending_list_limit = {PENDING_LIST_KB})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.execute(f"ALTER INDEX {INDEX} RESET (gin_pending_list_limit)")
    # 0014's own definition, replacing this one.
    created = revisions.load("0014_fulltext_by_week.py")._FUNCTIONS[-1]
    op.execute(created.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
