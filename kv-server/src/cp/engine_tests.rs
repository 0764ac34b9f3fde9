//! In-process cluster tests of the CP engine.
