"""The local stack: one assembler of its processes, used by `mailsync up`, the tests and bench/."""
