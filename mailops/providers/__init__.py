"""How accounts authenticate: OAuth (Microsoft, Google) or a password (manual)."""
