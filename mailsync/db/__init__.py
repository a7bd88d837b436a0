"""Everything that touches the application database: engine, tables, migrations, secrets at rest."""

from mailsync.db.engine import (
    MIGRATIONS,
    connection_lost,
    dispose_engines,
    get_engine,
    session_scope,
    upgrade,
)

__all__ = [
    "MIGRATIONS",
    "connection_lost",
    "dispose_engines",
    "get_engine",
    "session_scope",
    "upgrade",
]
