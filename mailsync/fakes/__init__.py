"""Fake Gmail and Microsoft servers that speak the real wire protocols, for tests and the demo.

They are the `demo` extra (`pip install 'mailsync[demo]'`, which `dev` includes): its trustme
makes their TLS certificates. Nothing else in mailsync needs them, so without the extra
importing any mailsync.fakes module fails here, saying what to install.
"""

from importlib.util import find_spec

if find_spec("trustme") is None:
    raise ModuleNotFoundError(
        "mailsync.fakes (the fake providers behind `mailsync up --demo`, `mailsync fakes`, the "
        "tests and bench/) needs the demo extra: pip install 'mailsync[demo]'",
        name="trustme",
    )
