"""Database helpers: engine, the plumbing tables (outbox, inbox, audit) and migrations."""
