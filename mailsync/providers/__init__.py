"""Mail providers behind one protocol; nothing outside this package sees Gmail or Graph JSON."""
