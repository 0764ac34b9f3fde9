//! Fault injection against a running kv cluster (filled in by the chaos issue).
